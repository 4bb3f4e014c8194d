"""Hostile and unlucky input: never hang, never poison, never reach outside, never miscount.

One test (or a few) per case: paths that leave the audio root, FIFOs, symlink loops, tar headers that
point backwards, loud float audio, the same file under several spellings, empty intervals, mixed-type
labels, edited indexes and manifests, skipped shards under DDP, resume checks, odd npy dtypes, deep JSON,
full disks, newlines in file names and absurd sample rates. Each reproduces the problem small; the S3 cases
(cache path from a manifest, remote names of local files, a frozen server) are in test_s3.py.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import msgpack
import numpy as np
import pytest
import soundfile as sf

from spgdataset import ShardError, SpectrogramDataset, SpgError, write_shards
from spgdataset.demo import make_corpus
from spgdataset.metadata import collect_inputs, walk_audio

SR = 16000
NO_MASKS = {"spectrogram": False, "masks": []}


# ---------------------------------------------------------------- helpers


def noise(seconds: float, rate: int = SR, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def wav(path: Path, seconds: float = 2.5, rate: int = SR, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(seconds, rate, seed), rate, subtype="PCM_16")
    return path


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def run_cli(args: List[Any], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spgdataset.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def report(result) -> Dict[str, Dict[str, str]]:
    """{path: report row} of a write_shards result."""
    return {row["path"]: row for row in result.manifest["report"]["files"]}


def stored_paths(folder) -> List[str]:
    with open(os.path.join(folder, "index.msgpack"), "rb") as f:
        return sorted(row["path"] for row in msgpack.unpackb(f.read(), raw=False))


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (what other languages' parsers do)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


class Shards:
    """A writable copy of a shard folder, with the edits an attacker (or an unlucky disk) would make."""

    def __init__(self, src: str, dst: Path) -> None:
        shutil.copytree(src, dst)
        self.folder = dst

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def manifest(self) -> Dict[str, Any]:
        return json.loads((self.folder / "manifest.json").read_text())

    def save_manifest(self, manifest: Dict[str, Any]) -> None:
        (self.folder / "manifest.json").write_text(json.dumps(manifest))

    def edit_manifest(self, edit: Callable[[Dict[str, Any]], None]) -> None:
        manifest = self.manifest
        edit(manifest)
        self.save_manifest(manifest)

    @property
    def rows(self) -> List[Dict[str, Any]]:
        return msgpack.unpackb((self.folder / "index.msgpack").read_bytes(), raw=False)

    def save_rows(self, rows: List[Dict[str, Any]], consistent: bool = True) -> None:
        """Write the index; with `consistent`, also make the manifest agree with it (digest, file and frame
        counts), so that only a check against the shards themselves can find the edit."""
        data = msgpack.packb(rows, use_bin_type=True)
        (self.folder / "index.msgpack").write_bytes(data)
        if consistent:
            manifest = self.manifest
            manifest["index_sha256"], manifest["index_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            for shard in manifest["shards"]:
                mine = [r for r in rows if r["shard"] == shard["name"]]
                shard["files"], shard["frames"] = len(mine), sum(r["frames"] for r in mine)
            self.save_manifest(manifest)

    def members(self, name: str) -> List[Tuple[str, bytes]]:
        with tarfile.open(self.folder / name) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]

    def rewrite(self, name: str, members: List[Tuple[str, bytes]], update_manifest: bool = True) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (self.folder / name).write_bytes(buf.getvalue())
        if update_manifest:
            def fix(manifest):
                shard = next(s for s in manifest["shards"] if s["name"] == name)
                shard["bytes"], shard["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
            self.edit_manifest(fix)


def epoch(ds, epoch_number: int = 0) -> List[Tuple[str, int]]:
    ds.set_epoch(epoch_number)
    out = []
    for item in ds:
        keys = item["key"] if isinstance(item["key"], list) else [item["key"]]
        out += list(zip(keys, np.atleast_1d(item["start"].numpy()).tolist()))
    return out


# ---------------------------------------------------------------- 3. paths that leave the audio root


def test_metadata_paths_outside_the_root_are_refused_per_file(tmp_path):
    root = tmp_path / "audio"
    for name in ("a.wav", "b.wav"):
        wav(root / name)
    outside = wav(tmp_path / "secret" / "x.wav", seed=1)
    (root / "link.wav").symlink_to(outside)
    meta = write_json(root / "metadata.json", {"a.wav": {}, "b.wav": {}, "../secret/x.wav": {},
                                               str(outside): {}, "link.wav": {}})
    result = write_shards(root, meta, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["a.wav", "b.wav"]
    rows = report(result)
    for name in ("../secret/x.wav", str(outside), "link.wav"):
        assert rows[name]["kind"] == "bad" and "outside the audio root" in rows[name]["problem"], rows[name]
        assert "--allow-outside-root" in rows[name]["problem"]
    taken = write_shards(root, meta, tmp_path / "out2", workers=1, progress=False, allow_outside_root=True)
    assert len(stored_paths(tmp_path / "out2")) == 3  # the three names of secret/x.wav are one file, stored once
    assert sorted(row["kind"] for row in report(taken).values()) == ["duplicate", "duplicate"]


def test_unusable_names_are_bad_input_not_a_crash(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    meta = write_json(root / "metadata.json", {"a.wav": {}, "nul\u0000.wav": {}, "": {}, "sub": {}})
    (root / "sub").mkdir()
    result = write_shards(root, meta, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    rows = report(result)
    assert "not a usable file name" in rows["nul\u0000.wav"]["problem"]
    assert "not a regular file (a directory)" in rows["sub"]["problem"]
    assert rows[""]["kind"] == "bad"


def test_a_file_list_with_paths_outside_the_root_is_refused_too(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    outside = wav(tmp_path / "elsewhere.wav", seed=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.wav\n{outside}\n../elsewhere.wav\n")
    result = run_cli([root, tmp_path / "out", "--files", listing, "--workers", "1", "--quiet"])
    assert result.returncode == 0, result.stderr
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    assert result.stderr.count("outside the audio root") == 2, result.stderr


# ---------------------------------------------------------------- 4, 5. FIFOs and symlink loops


@pytest.mark.timeout(90)
@pytest.mark.parametrize("listed", [True, False])
def test_a_fifo_named_like_audio_is_reported_not_waited_on(tmp_path, listed):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    os.mkfifo(root / "x.wav")
    args = [root]
    if listed:
        args.append(write_json(tmp_path / "metadata.json", {"a.wav": {}, "x.wav": {}}))
    result = run_cli([*args, tmp_path / "out", "--workers", "1", "--quiet"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    line = next(line for line in result.stderr.splitlines() if "x.wav" in line)
    assert "not a regular file" in line


@pytest.mark.timeout(60)
def test_a_symlink_loop_in_the_walk_stores_each_file_once(tmp_path):
    root = tmp_path / "audio"
    wav(root / "sub" / "a.wav")
    wav(root / "b.wav")
    (root / "sub" / "loop").symlink_to(root)  # one loop: root/sub/loop/sub/loop/...
    assert walk_audio(root) == ["b.wav", "sub/a.wav"]
    (root / "x").mkdir()
    (root / "y").mkdir()
    wav(root / "x" / "c.wav")
    (root / "x" / "to_y").symlink_to(root / "y")  # two loops: x -> y -> x -> ...
    (root / "y" / "to_x").symlink_to(root / "x")
    assert walk_audio(root) == ["b.wav", "sub/a.wav", "x/c.wav"]
    entries, rejected = collect_inputs(root)
    assert [e.path for e in entries] == ["b.wav", "sub/a.wav", "x/c.wav"] and rejected == []


@pytest.mark.timeout(60)
def test_the_walk_does_not_follow_links_out_of_the_root(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    wav(tmp_path / "other" / "o.wav")
    (root / "other").symlink_to(tmp_path / "other")
    assert walk_audio(root) == ["a.wav"]
    assert walk_audio(root, allow_outside_root=True) == ["a.wav", "other/o.wav"]


# ---------------------------------------------------------------- 8. loud float audio


def test_one_loud_float_file_is_bad_input_and_does_not_poison_the_stats(tmp_path):
    root = tmp_path / "audio"
    for i in range(3):
        wav(root / f"ok{i}.wav", seed=i)
    loud = noise(2.5, seed=9)
    loud[100:200] = 3e19  # finite float32 samples whose power overflows
    sf.write(root / "loud.wav", loud, SR, subtype="FLOAT")
    result = write_shards(root, None, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["ok0.wav", "ok1.wav", "ok2.wav"]
    assert report(result)["loud.wav"]["kind"] == "bad" and "not finite" in report(result)["loud.wav"]["problem"]
    stats = strict_json((tmp_path / "out" / "manifest.json").read_text())["stats"]
    assert all(math.isfinite(v) for v in stats["mean"] + stats["std"])
    ds = SpectrogramDataset(tmp_path / "out", window_content_ratio=0, batch_size=16,
                            output_configuration={"masks": []})
    assert all(bool(b["spectrogram"].isfinite().all()) for b in ds)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_reader_refuses_non_finite_stats(run16k, tmp_path, value):
    shards = Shards(run16k[0], tmp_path / "s")
    shards.edit_manifest(lambda m: m["stats"]["std"].__setitem__(3, value))
    with pytest.raises(SpgError, match=r"manifest.json.*stats"):
        SpectrogramDataset(str(shards))


# ---------------------------------------------------------------- 9, 10. spellings and empty intervals


def test_the_same_file_under_several_spellings_is_stored_once(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    wav(root / "sub" / "b.wav", seed=1)
    meta = write_json(root / "metadata.json", {
        "a.wav": {"metadata": {"speaker": "s1"}}, "./a.wav": {"metadata": {"speaker": "s2"}},
        "sub/../a.wav": {}, "sub/b.wav": {}, "sub//b.wav": {}})
    result = write_shards(root, meta, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["a.wav", "sub/b.wav"]
    rows = report(result)
    assert {p: r["kind"] for p, r in rows.items()} == {"./a.wav": "duplicate", "sub/../a.wav": "duplicate",
                                                       "sub//b.wav": "duplicate"}
    assert "a.wav" in rows["./a.wav"]["problem"]
    assert result.manifest["labels"]["speaker"] == ["s1"]  # the entry spelled as stored wins


def test_an_empty_interval_is_dropped_and_the_file_kept(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav", seconds=3)
    wav(root / "b.wav", seconds=3, seed=1)
    meta = write_json(root / "metadata.json", {
        "a.wav": {"intervals": {"speech": [[8433, 8433], [16000, 40000]]}},
        "b.wav": {"intervals": {"speech": [[5000, 1000]]}}})  # reversed stays bad input
    result = write_shards(root, meta, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    rows = report(result)
    assert rows["a.wav"]["kind"] == "warning" and "8433" in rows["a.wav"]["problem"]
    assert rows["b.wav"]["kind"] == "bad"
    index = msgpack.unpackb((tmp_path / "out" / "index.msgpack").read_bytes(), raw=False)
    assert index[0]["intervals"] == {"speech": [[16000, 40000]]}


# ---------------------------------------------------------------- 11. labels of every type


def test_every_present_label_value_gets_an_id_and_the_manifest_is_strict_json(tmp_path):
    root = tmp_path / "audio"
    values = {"t.wav": True, "i.wav": 1, "f.wav": 1.0, "s.wav": "1", "n.wav": float("nan"), "a.wav": "a",
              "z.wav": None, "m.wav": "<missing>", "x.wav": 2.5}
    metadata = {}
    for i, (name, value) in enumerate(values.items()):
        wav(root / name, seed=i)
        metadata[name] = {} if value == "<missing>" else {"metadata": {"speaker": value}}
    meta = root / "metadata.json"
    meta.write_text(json.dumps(metadata))  # NaN as Python writes it: accepted on input
    write_shards(root, meta, tmp_path / "out", workers=1, progress=False)
    manifest_text = (tmp_path / "out" / "manifest.json").read_text()
    strict_json(manifest_text)
    ds = SpectrogramDataset(tmp_path / "out", window_content_ratio=0, shuffle=False,
                            output_configuration={"masks": [], "spectrogram": False, "label": "speaker"})
    vocab = ds.label_vocabulary
    assert len(vocab) == 7  # True, 1 (= 1.0), 2.5, NaN, "1", "a", null
    assert vocab[0] is True and vocab[1] == 1 and vocab[2] == 2.5 and math.isnan(vocab[3])
    assert vocab[4:] == ["1", "a", None]
    label_of = {}
    for item in ds:
        label_of[item["key"]] = int(item["label"])
    by_path = {row["key"]: row["path"] for row in msgpack.unpackb((tmp_path / "out" / "index.msgpack").read_bytes())}
    got = {by_path[k]: v for k, v in label_of.items()}
    assert got["m.wav"] == -1  # missing key: no label
    assert got["i.wav"] == got["f.wav"] == 1  # 1 and 1.0 are one number
    assert len({got[n] for n in values if n not in ("m.wav", "f.wav")}) == 7
    assert all(v >= 0 for n, v in got.items() if n != "m.wav")


# ---------------------------------------------------------------- 12. an edited index


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> str:
    """16 files of 2-3 s, one per shard: every DataLoader slot of 2 ranks x 2 workers spans several files."""
    root = tmp_path_factory.mktemp("many")
    meta = make_corpus(root, total_seconds=40, seed=5, min_seconds=2.2, max_seconds=2.8)
    out = tmp_path_factory.mktemp("many_out")
    write_shards(root, meta, out, workers=1, max_shard_files=1, progress=False)
    return str(out)


EDITS = {
    "frames_x3": lambda rows: rows[0].update(frames=rows[0]["frames"] * 3),
    "frames_half": lambda rows: rows[0].update(frames=rows[0]["frames"] // 2),
    "duplicate_row": lambda rows: rows.append(dict(rows[0])),
    "wrong_key": lambda rows: rows[0].update(key=rows[0]["key"] + "x"),
    "other_intervals": lambda rows: rows[0].update(intervals={"speech": [[0, 10**6]]}),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_index_is_caught_by_its_digest(many_shards, tmp_path, edit):
    shards = Shards(many_shards, tmp_path / "s")
    rows = shards.rows
    EDITS[edit](rows)
    shards.save_rows(rows, consistent=False)
    with pytest.raises(ShardError, match=r"index.msgpack"):
        SpectrogramDataset(str(shards))


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_index_edited_with_its_manifest_is_caught_when_the_shard_is_read(many_shards, tmp_path, edit):
    """The manifest agrees with the edited index: only the shard itself can tell, and it must, before a
    miscounted window reaches training (a rank yielding another count than len() hangs DDP)."""
    shards = Shards(many_shards, tmp_path / "s")
    rows = shards.rows
    EDITS[edit](rows)
    shards.save_rows(rows)
    try:
        ds = SpectrogramDataset(str(shards), window_content_ratio=0, batch_size=8, output_configuration=NO_MASKS)
    except ShardError as exc:  # caught at open (duplicate keys): as good
        assert "index.msgpack" in str(exc)
        return
    with pytest.raises(ShardError, match=r"shard-000000.tar.*index"):
        list(ds)


def test_garbage_and_missing_index_are_one_line_errors(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    (shards.folder / "index.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    shards.edit_manifest(lambda m: [m.pop("index_sha256", None), m.pop("index_bytes", None)])
    with pytest.raises(SpgError, match=r"index.msgpack") as caught:
        SpectrogramDataset(str(shards))
    assert "\n" not in str(caught.value)
    (shards.folder / "index.msgpack").write_bytes(msgpack.packb({"not": "rows"}))
    with pytest.raises(SpgError, match=r"index.msgpack"):
        SpectrogramDataset(str(shards))
    (shards.folder / "index.msgpack").unlink()
    with pytest.raises(SpgError, match=r"index.msgpack.*no such file"):
        SpectrogramDataset(str(shards))


# ---------------------------------------------------------------- 2, 15. manifests that lie


BAD_MANIFESTS = {
    "name_up": (lambda m: m["shards"][0].update(name="../elsewhere/x.tar"), r"shards\[0\].name"),
    "name_abs": (lambda m: m["shards"][0].update(name="/etc/hostname"), r"shards\[0\].name"),
    "name_scheme": (lambda m: m["shards"][0].update(name="s3://b/x.tar"), r"shards\[0\].name"),
    "index_abs": (lambda m: m.update(index="/etc/passwd"), r"index"),
    "sha256": (lambda m: m["shards"][1].update(sha256="../victim/victim"), r"shards\[1\].sha256"),
    "sha256_upper": (lambda m: m["shards"][1].update(sha256=m["shards"][1]["sha256"].upper()), r"sha256"),
    "bytes": (lambda m: m["shards"][0].update(bytes=-1), r"shards\[0\].bytes"),
    "stats_length": (lambda m: m["stats"]["mean"].pop(), r"stats"),
    "hop_zero": (lambda m: m["features"].update(hop_length=0), r"hop_length"),
    "n_mels_text": (lambda m: m["features"].update(n_mels="80"), r"n_mels"),
    "shards_not_list": (lambda m: m.update(shards={"a": 1}), r"shards"),
    "labels": (lambda m: m.update(labels=[1, 2]), r"labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_manifest_that_lies_is_refused_naming_the_field(run16k, tmp_path, case):
    edit, field = BAD_MANIFESTS[case]
    shards = Shards(run16k[0], tmp_path / "s")
    shards.edit_manifest(edit)
    with pytest.raises(SpgError, match=r"manifest.json: .*" + field) as caught:
        SpectrogramDataset(str(shards))
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- 6. tar headers, FIFOs, devices


def negative_size(shards: Shards, name: str) -> None:
    """Give the second file's last member a negative size that points the walk back at the first header
    (with a valid header checksum): an endless stream of the first two files."""
    data = bytearray((shards.folder / name).read_bytes())
    with tarfile.open(shards.folder / name) as tar:
        offset = tar.getmembers()[3].offset
    header = data[offset : offset + 512]
    header[124:136] = b"-%010o\0" % (offset + 512)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[offset : offset + 512] = header
    (shards.folder / name).write_bytes(bytes(data))


@pytest.mark.timeout(60)
def test_a_negative_tar_size_is_a_shard_error_not_a_loop(run16k, tmp_path):
    from spgdataset.shardformat import tar_members
    from spgdataset.splits import normalize_split, subset_of

    shards = Shards(run16k[0], tmp_path / "s")
    negative_size(shards, "shard-000000.tar")
    data = (shards.folder / "shard-000000.tar").read_bytes()
    with pytest.raises(ValueError, match="size"):
        for count, _ in enumerate(tar_members(data, "x.tar")):
            assert count < 100, "the walk went round in circles"
    # the reader: the looping files (one speaker) belong to the other subset, so only the walk can notice
    looping = [r for r in shards.rows if r["shard"] == "shard-000000.tar"][:2]
    bounds = normalize_split((0.5, 0.5))
    other = 1 - subset_of(looping[0]["path"], looping[0]["metadata"], bounds, "speaker")
    assert all(subset_of(r["path"], r["metadata"], bounds, "speaker") != other for r in looping)
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, verify=False, split=(0.5, 0.5), subset=other,
                            split_key="speaker", output_configuration=NO_MASKS)
    with pytest.raises(ShardError, match="shard-000000.tar"):
        list(ds)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_a_shard_that_is_a_fifo_or_a_device_fails_at_once(run16k, tmp_path, kind):
    shards = Shards(run16k[0], tmp_path / "s")
    target = shards.folder / "shard-000001.tar"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, verify=False, output_configuration=NO_MASKS)
    with pytest.raises(ShardError, match="shard-000001.tar.*not a regular file"):
        list(ds)


@pytest.mark.timeout(60)
def test_a_manifest_or_index_that_is_a_fifo_fails_at_once(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    (shards.folder / "index.msgpack").unlink()
    os.mkfifo(shards.folder / "index.msgpack")
    with pytest.raises(SpgError, match="index.msgpack.*not a regular file"):
        SpectrogramDataset(str(shards))


def test_a_shard_larger_than_its_manifest_says_is_not_read_whole(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    with open(shards.folder / "shard-000000.tar", "ab") as f:
        f.write(bytes(10 << 20))
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, verify=False, output_configuration=NO_MASKS)
    with pytest.raises(ShardError, match=r"shard-000000.tar.*(larger|bytes)"):
        list(ds)


# ---------------------------------------------------------------- 15. npy members of other dtypes


NPY_CASES = {
    "timedelta": lambda a: a.astype("<m8[s]"),
    "unicode": lambda a: np.full(a.shape, "x", dtype="<U1"),
    "big_endian": lambda a: a.astype(">f2"),
    "int8": lambda a: a.astype(np.int8),
    "bool": lambda a: a > 0,
    "complex": lambda a: a.astype(np.complex64),
    "float64": lambda a: a.astype(np.float64),
    "fortran": lambda a: np.asfortranarray(a),
    "three_d": lambda a: a[None],
}


@pytest.mark.parametrize("case", sorted(NPY_CASES))
def test_npy_members_of_other_dtypes_are_shard_errors_that_warn_mode_skips(run16k, tmp_path, case, caplog):
    shards = Shards(run16k[0], tmp_path / "s")
    members = shards.members("shard-000000.tar")
    name, data = next((n, d) for n, d in members if n.endswith(".spec.npy"))
    array = np.load(io.BytesIO(data))
    buf = io.BytesIO()
    np.save(buf, NPY_CASES[case](array))
    shards.rewrite("shard-000000.tar", [(n, buf.getvalue() if n == name else d) for n, d in members])
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, normalize=False, batch_size=8,
                            output_configuration={"masks": []})
    with pytest.raises(ShardError, match=r"shard-000000.tar"):
        list(ds)
    warn = SpectrogramDataset(str(shards), window_content_ratio=0, normalize=False, batch_size=8, on_error="warn",
                              output_configuration={"masks": []})
    with caplog.at_level(logging.WARNING, logger="spgdataset"):
        batches = list(warn)
    assert len(batches) == len(warn)
    assert len(warn.errors) == 1 and "shard-000000.tar" in warn.errors[0]


# ---------------------------------------------------------------- 13. warn mode keeps len() under DDP


def corrupt(shards: Shards, name: str) -> None:
    data = bytearray((shards.folder / name).read_bytes())
    data[2000:2016] = bytes(b ^ 0x5A for b in data[2000:2016])
    (shards.folder / name).write_bytes(bytes(data))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_warn_mode_yields_len_batches_on_every_rank_and_reports_the_skip(many_shards, tmp_path, num_workers,
                                                                         caplog):
    shards = Shards(many_shards, tmp_path / "s")
    corrupt(shards, "shard-000003.tar")
    bad_key = next(r["key"] for r in shards.rows if r["shard"] == "shard-000003.tar")
    logged, skipped, filled, errors = [], 0, 0, []
    for rank in (0, 1):
        ds = SpectrogramDataset(str(shards), window_content_ratio=0, on_error="warn", rank=rank, world_size=2,
                                output_configuration=NO_MASKS)
        loader = ds.loader(batch_size=8, num_workers=num_workers)
        for epoch_number in (0, 1):
            loader.set_epoch(epoch_number)
            with caplog.at_level(logging.WARNING, logger="spgdataset"):
                caplog.clear()
                batches = list(loader)
            assert len(batches) == len(loader), (rank, epoch_number)
            got = [(k, s) for b in batches for k, s in zip(b["key"], b["start"].tolist())]
            assert bad_key not in {k for k, _ in got}
            assert len(got) == ds.num_windows() // 2, (rank, epoch_number)  # this rank's whole share
            if any("shard-000003.tar" in r.getMessage() for r in caplog.records):
                logged.append(epoch_number)
        # what the workers skipped and filled is known in the training process
        skipped, filled, errors = skipped + ds.skipped_shards, filled + ds.filled_windows, errors + ds.errors
    assert skipped >= 2 and len(errors) == skipped and all("shard-000003.tar" in e for e in errors), errors
    assert filled > 0
    assert set(logged) == {0, 1}  # and logged there, in every epoch that met the shard


def test_warn_mode_with_nothing_left_to_fill_from_says_so(many_shards, tmp_path):
    shards = Shards(many_shards, tmp_path / "s")
    for shard in shards.manifest["shards"]:
        corrupt(shards, shard["name"])
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, on_error="warn", batch_size=8,
                            output_configuration=NO_MASKS)
    with pytest.raises(ShardError, match="every shard"):
        list(ds)


# ---------------------------------------------------------------- 14. resume checks


def test_resume_refuses_another_world_size_or_shard_set(many_shards):
    def make(**kwargs):
        return SpectrogramDataset(kwargs.pop("source", many_shards), window_content_ratio=0, batch_size=4,
                                  output_configuration=NO_MASKS, **kwargs)

    ds = make(rank=0, world_size=2)
    items = iter(ds)
    next(items), next(items)
    state = ds.state_dict()
    items.close()
    make(rank=1, world_size=2).load_state_dict(state)  # another rank of the same job: fine
    with pytest.raises(ValueError, match="world_size"):
        make(rank=0, world_size=4).load_state_dict(state)
    fewer = os.path.join(many_shards, "shard-{000000..000009}.tar")
    with pytest.raises(ValueError, match="shard"):
        make(source=fewer, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        SpectrogramDataset(many_shards, window_content_ratio=0, batch_size=4, output_configuration=NO_MASKS,
                           rank=0, world_size=2, window_size_sec=1.0).load_state_dict(state)


# ---------------------------------------------------------------- smaller ones


def test_deeply_nested_metadata_is_a_one_line_error(tmp_path):
    wav(tmp_path / "a.wav")
    meta = tmp_path / "metadata.json"
    meta.write_text('{"a.wav": ' + "[" * 100000 + "]" * 100000 + "}")
    result = run_cli([tmp_path, meta, tmp_path / "out", "--quiet"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(meta) in lines[0] and "deep" in lines[0], result.stderr


def test_a_newline_in_a_bad_file_name_stays_on_one_line(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    (root / "bad\nname.wav").write_bytes(b"not audio" * 100)
    result = run_cli([root, tmp_path / "out", "--workers", "1", "--quiet"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "name.wav" in line]
    assert len(lines) == 1 and "bad\\nname.wav" in lines[0], result.stderr
    assert not any(line.startswith("name.wav") for line in result.stderr.splitlines())


def test_a_sample_rate_below_1_khz_is_bad_input(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    sf.write(root / "slow.wav", noise(0.01, rate=8000)[:40000], 1, subtype="PCM_16")  # 80 samples at "1 Hz"
    result = write_shards(root, None, tmp_path / "out", workers=1, progress=False)
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    assert "1 Hz" in report(result)["slow.wav"]["problem"]


def test_disk_full_names_the_file_being_written(tmp_path, monkeypatch):
    from spgdataset import shardformat

    root = tmp_path / "audio"
    wav(root / "a.wav")
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and ".tmp" in os.fspath(path) and "shard-" in os.fspath(path):
            f.close()
            f = real_open("/dev/full", mode, *args, **kwargs)
        return f

    monkeypatch.setattr(shardformat, "open", full, raising=False)
    with pytest.raises(SpgError, match=r"shard-000000.tar.*(No space|space)"):
        write_shards(root, None, tmp_path / "out", workers=1, progress=False)


def test_progress_keeps_bad_and_filtered_apart(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    wav(root / "b.wav", seed=1)
    (root / "c.wav").write_bytes(b"not audio" * 100)
    meta = write_json(root / "metadata.json", {"a.wav": {"metadata": {"g": "f"}}, "b.wav": {"metadata": {"g": "m"}},
                                               "c.wav": {"metadata": {"g": "f"}}})
    result = run_cli([root, meta, tmp_path / "out", "--labelset", "g=f", "--workers", "1"])
    assert result.returncode == 0, result.stderr
    last = [line for line in result.stderr.splitlines() if line.startswith("[spg-shard]")][-1]
    assert "bad 1" in last and "filtered 1" in last, last
    assert "1 bad, 1 filtered" in result.stdout
