"""Reruns at scale: headers read once (and again only for changed files), finished shards told apart from their
state records by stamps instead of reading them again, and a split run's parts leaving each other's work alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spgdataset import write_shards
from spgdataset.demo import make_corpus
from spgdataset.format.codec import pack, unpack
from spgdataset.write import tasks


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=24, seed=21, min_seconds=1.5, max_seconds=3)
    return root, meta


@pytest.fixture
def probes(monkeypatch):
    """Counts the headers read from audio files (workers=1: in this process)."""
    seen = []
    real = tasks.probe

    def counting(path, name=None):
        seen.append(name)
        return real(path, name)

    monkeypatch.setattr(tasks, "probe", counting)
    return seen


def test_a_finished_run_started_again_reads_no_header(corpus, tmp_path, probes, helpers):
    root, meta = corpus
    out = tmp_path / "out"
    first = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    files = first.manifest["totals"]["files"]
    assert first.headers_read == len(probes) == files >= 8
    before = helpers.output_files(out)
    probes.clear()
    again = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    assert (again.headers_read, len(probes)) == (0, 0)
    assert (again.shards_written, again.shards_reused) == (0, len(first.manifest["shards"]))
    assert helpers.output_files(out) == before


def test_only_changed_files_are_read_again(corpus, tmp_path, probes):
    root, meta = corpus
    out = tmp_path / "out"
    write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    touched = sorted(Path(root).glob("*/*.wav"))[3]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, a later mtime
    probes.clear()
    again = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    assert again.headers_read == 1 and probes == [touched.relative_to(root).as_posix()]
    assert again.shards_written == 0  # same header, same plan: the job resumes, nothing is rewritten


@pytest.mark.parametrize("damage", [b"", b"\xc1 not msgpack", pack({"version": 1, "paths": ["a.wav"], "size": b"1",
                                                                       "mtime": b"", "samples": b"", "rate": b"",
                                                                       "problems": {}}),
                                    pack([1, 2, 3])])
def test_a_damaged_header_file_costs_a_reread_not_a_wrong_plan(damage, corpus, tmp_path, probes, helpers):
    root, meta = corpus
    out = tmp_path / "out"
    first = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    before = helpers.output_files(out)
    (out / ".spg-state" / "headers.msgpack").write_bytes(damage)
    again = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    assert again.headers_read == first.manifest["totals"]["files"]
    assert again.shards_written == 0 and helpers.output_files(out) == before


def test_records_written_before_stamps_are_checked_by_digest_then_stamped(corpus, tmp_path, helpers):
    """State records of 0.2 have no stamp: their shards are hashed once (a shard replaced by other bytes of the
    same size is written again), and the records get the stamp, so the next rerun only lists the folder."""
    root, meta = corpus
    out = tmp_path / "out"
    first = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    expected = helpers.output_files(out)
    records = sorted((out / ".spg-state").glob("shard-*.tar.msgpack"))
    for path in records:
        record = unpack(path.read_bytes())
        del record["stamp"]
        path.write_bytes(pack(record))
    victim = out / "shard-000001.tar"
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    again = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    assert (again.shards_written, again.shards_reused) == (1, len(first.manifest["shards"]) - 1)
    assert helpers.output_files(out) == expected
    assert all(unpack(p.read_bytes())["stamp"] for p in records)


def test_a_part_leaves_the_leftovers_of_other_parts_alone(corpus, tmp_path, helpers):
    """A killed part's temporary files may belong to a part that is still writing: a part cleans only its own
    shards' leftovers, and the run that completes the set cleans everything."""
    root, meta = corpus
    out = tmp_path / "out"
    reference = tmp_path / "reference"
    write_shards(root, meta, reference, workers=1, max_shard_files=2, progress=False)
    (out / ".spg-state").mkdir(parents=True)
    mine, theirs = out / ".shard-000002.tar.tmp17", out / ".shard-000001.tar.tmp18-0a1b2c3d"
    their_record = out / ".spg-state" / ".shard-000003.tar.msgpack.tmp19"
    for path in (mine, theirs, their_record):
        path.write_bytes(b"half written")
    first = write_shards(root, meta, out, workers=1, max_shard_files=2, part=(0, 2), progress=False)
    assert first.manifest is None
    assert not mine.exists() and theirs.exists() and their_record.exists()
    second = write_shards(root, meta, out, workers=1, max_shard_files=2, part=(1, 2), progress=False)
    assert second.manifest is not None
    assert not theirs.exists() and not their_record.exists()
    assert helpers.output_files(out) == helpers.output_files(reference)


def test_damaged_state_records_mean_the_shard_is_written_again(corpus, tmp_path, helpers):
    root, meta = corpus
    out = tmp_path / "out"
    first = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    expected = helpers.output_files(out)
    state = out / ".spg-state"
    (state / "shard-000000.tar.msgpack").write_bytes(b"\x93garbage")
    (state / "shard-000001.tar.msgpack").write_bytes(pack({"name": "shard-000001.tar", "files": "three"}))
    record = unpack((state / "shard-000002.tar.msgpack").read_bytes())
    record["name"] = "shard-000009.tar"  # a record that speaks of another shard
    (state / "shard-000002.tar.msgpack").write_bytes(pack(record))
    again = write_shards(root, meta, out, workers=1, max_shard_files=2, progress=False)
    assert (again.shards_written, again.shards_reused) == (3, len(first.manifest["shards"]) - 3)
    assert helpers.output_files(out) == expected
