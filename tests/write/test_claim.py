"""Claiming an output folder (write/claim.py): nothing deleted or overwritten that spgdataset did not write, the
audio folder never the output, one writer at a time (real processes), and a dead run's leftovers cleaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Tuple

import pytest

from spgdataset import SpectrogramDataset, SpgError, write_shards
from spgdataset.demo import make_corpus
from spgdataset.format.names import STATE_DIR
from tests.helpers import CLI, noise, wav

import soundfile as sf


def snapshot(folder: Path) -> Dict[str, Tuple[int, bytes]]:
    """Every entry under `folder` (links as links) with its bytes, to show nothing was touched."""
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            found[str(path.relative_to(folder))] = (0, os.readlink(path).encode())
        elif path.is_file():
            found[str(path.relative_to(folder))] = (path.stat().st_mtime_ns, path.read_bytes())
        else:
            found[str(path.relative_to(folder)) + "/"] = (0, b"")
    return found


@pytest.fixture
def audio(tmp_path) -> Tuple[Path, str]:
    """A corpus whose folder also holds a recording named like a shard, listed in metadata.json."""
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=12, seed=3, min_seconds=2, max_seconds=3)
    wav(root / "shard-take1.wav", 2.5)
    entries = json.loads(Path(meta).read_text())
    entries["shard-take1.wav"] = {}
    Path(meta).write_text(json.dumps(entries))
    return root, meta


def test_the_audio_folder_is_never_the_output(audio, tmp_path):
    root, meta = audio
    before = snapshot(root)
    with pytest.raises(SpgError, match="is the audio folder"):  # the reference call deleted shard-take1.wav
        SpectrogramDataset(str(root), str(root), str(tmp_path / "idx"), meta)
    with pytest.raises(SpgError, match="is the audio folder"):
        write_shards(root, meta, root / "sub" / "..", overwrite=True, progress=False)
    assert snapshot(root) == before and not (tmp_path / "idx").exists()


def test_a_folder_holding_user_files_is_refused_and_left_as_it_was(audio, tmp_path):
    root, meta = audio
    shared = tmp_path / "shared"
    (shared / STATE_DIR).mkdir(parents=True)
    (shared / "shard-notes.txt").write_text("my notes")
    (shared / STATE_DIR / "keep.txt").write_text("keep me")
    (shared / "shard-000000.tar").write_text("not a shard, not written by spgdataset")
    (shared / "old").mkdir()
    (shared / "link.tar").symlink_to(root / "shard-take1.wav")
    before = snapshot(shared)
    with pytest.raises(SpgError) as refused:
        SpectrogramDataset(str(root), str(shared), str(tmp_path / "idx"), meta)
    for name in ("shard-notes.txt", ".spg-state/keep.txt", "shard-000000.tar", "old (folder)", "link.tar (a symlink)"):
        assert name in str(refused.value)
    assert "choose another output folder" in str(refused.value)
    with pytest.raises(SpgError, match="did not write"):
        write_shards(root, meta, shared, overwrite=True, progress=False)
    assert snapshot(shared) == before


def test_the_cli_refuses_a_foreign_folder_in_one_line_before_reading_headers(audio, tmp_path):
    root, meta = audio
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("a,b\n")
    done = subprocess.run([*CLI, str(root), meta, str(out), "--workers", "1", "--overwrite"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"spg-shard: error: {out}: holds files spg-shard did not write (results.csv); it writes only into an empty "
        "folder or one it wrote before: choose another output folder, or move them away"]
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]


def test_overwrite_replaces_only_spgdatasets_files(audio, tmp_path):
    """A previous set (shards, manifest, index, state, a shard left without its record by a killed run) is ours:
    overwrite replaces it. A user's file added later makes the folder someone else's again."""
    root, meta = audio
    out = tmp_path / "out"
    first = write_shards(root, meta, out, max_shard_files=2, workers=1, progress=False)
    assert len(first.manifest["shards"]) >= 3
    (out / STATE_DIR / "shard-000001.tar.msgpack").unlink()  # killed between the tar and its record
    (out / "manifest.json").unlink()
    from spgdataset.format.features import FeatureConfig

    second = write_shards(root, meta, out, features=FeatureConfig(n_mels=64), overwrite=True, workers=1,
                          progress=False)
    assert second.manifest["features"]["n_mels"] == 64 and second.shards_written == 1
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-000000.tar"]
    (out / "README.md").write_text("what these shards are")
    before = snapshot(out)
    with pytest.raises(SpgError, match=r"did not write \(README.md\)"):
        write_shards(root, meta, out, overwrite=True, workers=1, progress=False)
    assert snapshot(out) == before


def test_a_wrong_audio_root_creates_nothing(tmp_path):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"a.wav": {}, "b.wav": {}}))
    with pytest.raises(SpgError, match="nothing usable"):
        write_shards(tmp_path / "no-such-audio", meta, tmp_path / "shards", progress=False)
    assert not (tmp_path / "shards").exists()


# ---------------------------------------------------------------- one writer at a time, with real processes


def slow_corpus(root: Path, seconds: float = 240.0) -> str:
    """A few clips and one long recording at a rate sharing no factor with 16 kHz: its resampling (the bounded
    direct path) keeps a run busy for a few seconds, long enough to start a second one beside it."""
    meta = make_corpus(root, total_seconds=10, seed=5, min_seconds=2, max_seconds=3)
    sf.write(root / "long.wav", noise(seconds, 22051), 22051, subtype="PCM_16")
    entries = json.loads(Path(meta).read_text())
    entries["long.wav"] = {}
    Path(meta).write_text(json.dumps(entries))
    return meta


def start_cli(root: Path, meta: str, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, str(root), meta, str(out), "--workers", "1", "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cli(root: Path, meta: str, out: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, str(root), meta, str(out), "--workers", "1", "--quiet", *args], capture_output=True,
                          text=True, timeout=timeout)


def holding_run(tmp_path: Path) -> Tuple[Path, str, Path, subprocess.Popen]:
    """A run of the CLI that holds its output folder's lock now (and for a few seconds more)."""
    root, out = tmp_path / "audio", tmp_path / "out"
    meta = slow_corpus(root)
    first = start_cli(root, meta, out)
    wait_for_holder(out, first)
    return root, meta, out, first


def wait_for_holder(out: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    """The lock file's holder once the run wrote itself there."""
    lock, deadline = out / STATE_DIR / "lock", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(lock.read_text())
            if holder.get("pid") == proc.pid:
                return holder
        except (OSError, ValueError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError("the first run never took its lock")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_run_is_refused_while_the_first_writes_and_the_first_completes(tmp_path):
    root, meta, out, first = holding_run(tmp_path)
    os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, whatever the machine's speed
    try:
        same = finish_cli(root, meta, out, timeout=120)
        other = finish_cli(root, meta, out, "--n-mels", "64", "--overwrite", timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    for refused in (same, other):
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1, refused.stderr
        assert f"another spg-shard run is writing here (pid {first.pid} on " in lines[0]
    out_text, err_text = first.communicate(timeout=240)
    assert first.returncode == 0, err_text
    assert json.loads((out / "manifest.json").read_text())["totals"]["files"] == len(json.loads(Path(meta).read_text()))
    assert [p.name for p in out.iterdir() if ".tmp" in p.name] == []
    assert SpectrogramDataset(out).num_windows() > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_run_holds_nothing_and_its_leftovers_are_cleaned(tmp_path):
    root, meta, out, first = holding_run(tmp_path)
    first.kill()
    first.communicate()
    (out / ".shard-000000.tar.tmp99999-0a1b2c3d").write_bytes(b"half")  # what SIGKILL can leave mid-write
    rerun = finish_cli(root, meta, out)
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in out.rglob("*") if ".tmp" in p.name] == []
    assert (out / "manifest.json").exists()


REFERENCE_CALL = """
import sys
from spgdataset import SpectrogramDataset
ds = SpectrogramDataset(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], shuffle=False)
print(ds.num_windows())
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_making_the_reference_call_at_once_both_get_the_shards(tmp_path):
    root = tmp_path / "audio"
    meta = slow_corpus(root, seconds=120)
    args = [sys.executable, "-c", REFERENCE_CALL, str(root), str(tmp_path / "spec"), str(tmp_path / "idx"), meta]
    ranks = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [rank.communicate(timeout=280) for rank in ranks]
    for rank, (out_text, err_text) in zip(ranks, results):
        assert rank.returncode == 0, err_text
    assert results[0][0] == results[1][0] and int(results[0][0]) > 0
    assert any("waiting for the run writing" in err for _, err in results), [err for _, err in results]


# ---------------------------------------------------------------- the build record names its manifest


def test_a_shard_folder_replaced_by_another_corpus_is_built_again(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    meta = make_corpus(ours, total_seconds=10, seed=1, min_seconds=2, max_seconds=3)
    other_meta = make_corpus(theirs, total_seconds=30, seed=2, min_seconds=2, max_seconds=3)
    spec, idx = tmp_path / "spec", tmp_path / "idx"
    first = SpectrogramDataset(str(ours), str(spec), str(idx), meta, shuffle=False)
    expected = [b["key"] for b in first]
    other = tmp_path / "other-spec"
    write_shards(theirs, other_meta, other, progress=False)
    for path in spec.glob("shard-*.tar"):
        path.unlink()
    for path in other.iterdir():  # the folder now holds the other corpus's whole set
        if path.is_file():
            os.replace(path, spec / path.name)
    assert SpectrogramDataset(spec, shuffle=False).num_windows() != len(expected)
    again = SpectrogramDataset(str(ours), str(spec), str(idx), meta, shuffle=False)
    assert [b["key"] for b in again] == expected
    record = json.loads((idx / "build.json").read_text())
    import hashlib

    assert record["manifest_sha256"] == hashlib.sha256((spec / "manifest.json").read_bytes()).hexdigest()


def test_a_build_json_that_is_not_ours_is_not_overwritten(tmp_path):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=6, seed=1, min_seconds=2, max_seconds=3)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "build.json").write_text('{"scripts": {"build": "make"}}')
    with pytest.raises(SpgError, match="not spgdataset's build record"):
        SpectrogramDataset(str(root), str(tmp_path / "spec"), str(tmp_path / "idx"), meta)
    assert (tmp_path / "idx" / "build.json").read_text() == '{"scripts": {"build": "make"}}'
