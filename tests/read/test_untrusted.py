"""Hostile and unlucky shard sets: the reader trusts nothing it reads.

Manifests that lie (names out of the folder, bad digests, wrong types), edited indexes, tar headers that
point backwards, shards that are FIFOs, devices or longer than announced, npy members of other dtypes, and
skipped shards under DDP (warn mode must keep len() on every rank), resume under another plan. The S3 cases
(cache names from a manifest, remote names of local files, a frozen server) are in tests/storage/test_s3.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile

import msgpack
import numpy as np
import pytest

from spgdataset import ShardError, SpectrogramDataset, SpgError, write_shards
from spgdataset.demo import make_corpus
from tests.helpers import NO_MASKS, Shards


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_reader_refuses_non_finite_stats(run16k, tmp_path, value):
    shards = Shards(run16k[0], tmp_path / "s")
    shards.edit_manifest(lambda m: m["stats"]["std"].__setitem__(3, value))
    with pytest.raises(SpgError, match=r"manifest.json.*stats"):
        SpectrogramDataset(str(shards))


# ---------------------------------------------------------------- 9, 10. spellings and empty intervals


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


@pytest.mark.parametrize("fmt", [2, 1])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_index_is_caught_by_its_digest(many_shards, tmp_path, edit, fmt):
    shards = Shards(many_shards, tmp_path / "s")
    if fmt == 1:
        shards.as_format_1()
    rows = shards.rows
    EDITS[edit](rows)
    shards.save_rows(rows, consistent=False)
    with pytest.raises(ShardError, match=shards.index_name):
        SpectrogramDataset(str(shards))


@pytest.mark.parametrize("fmt", [2, 1])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_index_edited_with_its_manifest_is_caught_when_the_shard_is_read(many_shards, tmp_path, edit, fmt):
    """The manifest agrees with the edited index: only the shard itself can tell, and it must, before a
    miscounted window reaches training (a rank yielding another count than len() hangs DDP)."""
    shards = Shards(many_shards, tmp_path / "s")
    if fmt == 1:
        shards.as_format_1()
    rows = shards.rows
    EDITS[edit](rows)
    shards.save_rows(rows)
    try:
        ds = SpectrogramDataset(str(shards), window_content_ratio=0, batch_size=8, output_configuration=NO_MASKS)
    except ShardError as exc:  # caught at open (a key twice in format 1, an interval past the file): as good
        assert shards.index_name in str(exc)
        return
    with pytest.raises(ShardError, match=r"shard-000000.tar.*(index|twice)"):
        list(ds)


def test_garbage_and_missing_index_are_one_line_errors(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    magic = b"SPGIDX\x00\x01"
    for data in (b"\xc1\xc1 not an index", magic + (1 << 40).to_bytes(8, "little") + bytes(100),
                 magic + (4).to_bytes(8, "little") + b"\xc1" * 100):  # bad magic, header past the end, bad header
        (shards.folder / "index.bin").write_bytes(data)
        shards.edit_manifest(lambda m: m.update(index_sha256=hashlib.sha256(data).hexdigest(), index_bytes=len(data)))
        with pytest.raises(ShardError, match=r"index.bin: (not a columnar index|.*header)") as caught:
            SpectrogramDataset(str(shards))
        assert "\n" not in str(caught.value)
    (shards.folder / "index.bin").unlink()
    with pytest.raises(SpgError, match=r"index.bin.*no such file"):
        SpectrogramDataset(str(shards))
    shards = Shards(run16k[0], tmp_path / "s1")
    shards.as_format_1()
    shards.edit_manifest(lambda m: [m.pop("index_sha256"), m.pop("index_bytes")])  # as 0.1 wrote them
    (shards.folder / "index.msgpack").write_bytes(b"\xc1\xc1 not msgpack")
    with pytest.raises(SpgError, match=r"index.msgpack") as caught:
        SpectrogramDataset(str(shards))
    assert "\n" not in str(caught.value)
    (shards.folder / "index.msgpack").write_bytes(msgpack.packb({"not": "rows"}))
    with pytest.raises(SpgError, match=r"index.msgpack"):
        SpectrogramDataset(str(shards))


def test_a_format_1_shard_set_reads_to_the_same_windows(many_shards, tmp_path):
    """Shard sets written before the columnar index (format 1, index.msgpack) are read as they are."""
    old = Shards(many_shards, tmp_path / "old")
    old.as_format_1()
    for kwargs in ({}, {"split": (0.5, 0.5), "subset": 1, "split_key": "speaker"},
                   {"window_content_ratio": 0.3, "output_configuration": {"masks": ["speech"], "label": "speaker"}}):
        new_ds, old_ds = SpectrogramDataset(many_shards, **kwargs), SpectrogramDataset(str(old), **kwargs)
        assert old_ds.windows() == new_ds.windows() and len(old_ds) == len(new_ds)
        assert old_ds.label_vocabulary == new_ds.label_vocabulary
        def items(ds):
            return [(w["key"], int(w["start"]), int(w.get("label", -1))) for w in ds]

        assert items(old_ds) == items(new_ds)


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
    from spgdataset.format.tar import tar_members
    from spgdataset.rules.splits import normalize_split, subset_of

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
    (shards.folder / "index.bin").unlink()
    os.mkfifo(shards.folder / "index.bin")
    with pytest.raises(SpgError, match="index.bin.*not a regular file"):
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


@pytest.mark.slow
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


def test_resume_accepts_another_world_size_and_refuses_another_shard_set(many_shards):
    def make(**kwargs):
        return SpectrogramDataset(kwargs.pop("source", many_shards), window_content_ratio=0, batch_size=4,
                                  output_configuration=NO_MASKS, **kwargs)

    ds = make(rank=0, world_size=2)
    items = iter(ds)
    next(items), next(items)
    state = ds.state_dict()
    items.close()
    make(rank=1, world_size=2).load_state_dict(state)  # another rank of the same job: fine
    resized = make(rank=0, world_size=4)
    resized.load_state_dict(state)  # another layout: the saved run becomes a finished stage (rules/elastic.py)
    assert resized.state_dict()["stages"] == [[2, 1, 2]] and resized.state_dict()["consumed"] == 0
    with pytest.raises(ValueError, match="stages"):
        make(rank=0, world_size=4).load_state_dict({**state, "stages": [[2, 1, 10**6]]})
    with pytest.raises(ValueError, match="stages must be"):
        make(rank=0, world_size=4).load_state_dict({**state, "stages": [[0, 1, 1]]})
    # a hand-edited layout of 10**9 ranks would keep a resume busy for hours: refused, the field named
    with pytest.raises(ValueError, match="stages must be"):
        make(rank=0, world_size=4).load_state_dict({**state, "stages": [[10**9, 1, 1]]})
    with pytest.raises(ValueError, match="stages must be"):
        make(rank=0, world_size=4).load_state_dict({**state, "stages": [[60000, 1000, 1]]})
    with pytest.raises(ValueError, match="world_size must be"):
        make(rank=0, world_size=4).load_state_dict({**state, "world_size": 10**9})
    with pytest.raises(ValueError, match="world_size x num_workers"):
        make(rank=0, world_size=4).load_state_dict({**state, "world_size": 60000, "num_workers": 1000})
    fewer = os.path.join(many_shards, "shard-{000000..000009}.tar")
    with pytest.raises(ValueError, match="shard"):
        make(source=fewer, rank=0, world_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="window"):
        SpectrogramDataset(many_shards, window_content_ratio=0, batch_size=4, output_configuration=NO_MASKS,
                           rank=0, world_size=2, window_size_sec=1.0).load_state_dict(state)


# ---------------------------------------------------------------- smaller ones


def test_a_shard_list_naming_a_shard_twice_is_refused(run16k):
    """Its windows would be yielded twice an epoch."""
    with pytest.raises(SpgError, match="more than once"):
        SpectrogramDataset(os.path.join(run16k[0], "shard-00000{0,1,0}.tar"))
