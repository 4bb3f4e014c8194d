"""Hostile and unlucky input to the writer: never hang, never reach outside, never poison, never miscount.

Paths that leave the audio root, FIFOs, symlink loops, loud float audio, the same file under several
spellings, empty intervals, labels of every JSON type, deep JSON, full disks, newlines in file names and
absurd sample rates: each reproduced small, each a report line or a one-line error.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import soundfile as sf

from spgdataset import SpectrogramDataset, SpgError, write_shards
from spgdataset.write.inputs import collect_inputs, walk_audio
from tests.helpers import SR, index_rows, noise, report, run_cli, stored_paths, strict_json, wav, write_json


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


@pytest.mark.slow
def test_a_file_list_with_paths_outside_the_root_is_refused_too(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    outside = wav(tmp_path / "elsewhere.wav", seed=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.wav\n{outside}\n../elsewhere.wav\n")
    result = run_cli([root, tmp_path / "out", "--files", listing, "--workers", "1"])  # not --quiet: lines per file
    assert result.returncode == 0, result.stderr
    assert stored_paths(tmp_path / "out") == ["a.wav"]
    assert result.stderr.count("outside the audio root") == 2, result.stderr


# ---------------------------------------------------------------- 4, 5. FIFOs and symlink loops


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("listed", [True, False])
def test_a_fifo_named_like_audio_is_reported_not_waited_on(tmp_path, listed):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    os.mkfifo(root / "x.wav")
    args = [root]
    if listed:
        args.append(write_json(tmp_path / "metadata.json", {"a.wav": {}, "x.wav": {}}))
    result = run_cli([*args, tmp_path / "out", "--workers", "1"], timeout=60)  # not --quiet: a line per file
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
    index = index_rows(tmp_path / "out")
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
    by_path = {row["key"]: row["path"] for row in index_rows(tmp_path / "out")}
    got = {by_path[k]: v for k, v in label_of.items()}
    assert got["m.wav"] == -1  # missing key: no label
    assert got["i.wav"] == got["f.wav"] == 1  # 1 and 1.0 are one number
    assert len({got[n] for n in values if n not in ("m.wav", "f.wav")}) == 7
    assert all(v >= 0 for n, v in got.items() if n != "m.wav")


# ---------------------------------------------------------------- 12. an edited index


@pytest.mark.slow
def test_deeply_nested_metadata_is_a_one_line_error(tmp_path):
    wav(tmp_path / "a.wav")
    meta = tmp_path / "metadata.json"
    meta.write_text('{"a.wav": ' + "[" * 100000 + "]" * 100000 + "}")
    result = run_cli([tmp_path, meta, tmp_path / "out", "--quiet"])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(meta) in lines[0] and "deep" in lines[0], result.stderr


@pytest.mark.slow
def test_a_newline_in_a_bad_file_name_stays_on_one_line(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    (root / "bad\nname.wav").write_bytes(b"not audio" * 100)
    result = run_cli([root, tmp_path / "out", "--workers", "1"])  # not --quiet: a line per file
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
    from spgdataset.storage import local

    root = tmp_path / "audio"
    wav(root / "a.wav")
    real_open = open

    def full(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and ".tmp" in os.fspath(path) and "shard-" in os.fspath(path):
            f.close()
            f = real_open("/dev/full", mode, *args, **kwargs)
        return f

    monkeypatch.setattr(local, "open", full, raising=False)
    with pytest.raises(SpgError, match=r"shard-000000.tar.*(No space|space)"):
        write_shards(root, None, tmp_path / "out", workers=1, progress=False)


@pytest.mark.slow
def test_progress_keeps_bad_and_filtered_apart(tmp_path):
    root = tmp_path / "audio"
    wav(root / "a.wav")
    wav(root / "b.wav", seed=1)
    (root / "c.wav").write_bytes(b"not audio" * 100)
    meta = write_json(root / "metadata.json", {"a.wav": {"metadata": {"g": "f"}}, "b.wav": {"metadata": {"g": "m"}},
                                               "c.wav": {"metadata": {"g": "f"}}})
    result = run_cli([root, meta, tmp_path / "out", "--keep", "g=f", "--workers", "1"])
    assert result.returncode == 0, result.stderr
    old_spelling = run_cli([root, meta, tmp_path / "old", "--labelset", "g=f", "--workers", "1"])
    assert "that is --keep now" in old_spelling.stderr and "1 bad, 1 filtered" in old_spelling.stdout
    last = [line for line in result.stderr.splitlines() if line.startswith("[spg-shard]")][-1]
    assert "bad 1" in last and "filtered 1" in last, last
    assert "1 bad, 1 filtered" in result.stdout
