"""The reader's stages and seams on their own: slot_chunks (with fill-in), read_plans, the epoch cursor,
and the public surface the router uses (iter_epoch, worker_windows, plan_epoch)."""

from __future__ import annotations

import collections
import os
import pickle
from typing import List, Optional

import numpy as np
import pytest
from torch.utils.data import DataLoader

from spgdataset import ShardError, SpectrogramDataset
from spgdataset.read.records import FileRecord
from spgdataset.read.cursor import EpochCursor
from spgdataset.read.stages import piece_plan, read_plans, slot_chunks
from spgdataset.rules.order import EpochOrder, epoch_order
from spgdataset.rules.plan import resume_point
from tests.helpers import NO_MASKS


def record(key: str, windows: int) -> FileRecord:
    return FileRecord(key, key + ".wav", np.zeros((2, 3), np.float16), {}, {}, np.arange(windows) * 10)


# ---------------------------------------------------------------- stages


SHARD_FILES = 3


def _order(shards: int, windows: int = 4, chunk_windows: int = 10, seed: int = 1) -> EpochOrder:
    bounds = np.arange(0, SHARD_FILES * shards + 1, SHARD_FILES, dtype=np.int64)
    counts = np.full(SHARD_FILES * shards, windows, dtype=np.int64)
    return epoch_order(bounds, counts, seed, 2, True, 2, chunk_windows, chunk_windows)


def _reader(bad=(), reads=None):
    """read(j, ids) as the dataset's: files `ids` of shard j, whole, in id order (None: a skipped shard)."""
    def read(j: int, ids: np.ndarray, alone: bool = False) -> Optional[List[FileRecord]]:
        if reads is not None:
            reads.append((j, ids.tolist(), alone))
        assert all(i // SHARD_FILES == j for i in ids.tolist()) and list(ids) == sorted(ids)
        return None if j in bad else [record(f"f{i}", 4) for i in ids.tolist()]
    return read


def expected_windows(order: EpochOrder, ranges: np.ndarray) -> List[tuple]:
    """(file key, start) of ranges of the order, worked out from its definition: chunk windows numbered in file
    order, then put in the chunk's permutation."""
    out = []
    for c in range(len(order.chunk_starts) - 1):
        files = order.files[order.chunk_files[c] : order.chunk_files[c + 1]].tolist()
        numbered = [(f"f{f}", 10 * w) for f in files for w in range(4)]
        out += [numbered[w] for w in order.permutation(c).tolist()]
    return [w for lo, hi in ranges.tolist() for w in out[lo:hi]]


def _in_order(chunk):
    laid = [(r, s) for r in chunk.records for s in r.starts.tolist()]
    return [laid[i] for i in chunk.order.tolist()]


@pytest.mark.parametrize("ranges", [[[0, 48]], [[5, 17]], [[30, 48], [0, 3], [20, 21]]])
def test_slot_chunks_yield_their_ranges_of_the_order(ranges):
    order, ranges = _order(4), np.array(ranges, dtype=np.int64)
    assert order.total == 48
    got = [(r.key, int(s)) for c in slot_chunks(order, ranges, np.arange(0, 13, 3), _reader(), ahead=False)
           for r, s in _in_order(c)]
    assert got == expected_windows(order, ranges)


def test_a_skipped_shard_is_made_up_from_the_files_read():
    order, everything = _order(4), np.array([[0, 48]], dtype=np.int64)
    filled: List[int] = []
    chunks = list(slot_chunks(order, everything, np.arange(0, 13, 3), _reader(bad={2}), filled.append, "here"))
    got = [(r.key, int(s)) for c in chunks for r, s in _in_order(c)]
    lost = {f"f{i}" for i in range(6, 9)}
    kept = [w for w in expected_windows(order, everything) if w[0] not in lost]
    assert got[: len(kept)] == kept and len(got) == 48 and sum(filled) == 12
    assert all(w[0] not in lost for w in got[len(kept):])  # repeats of files that were read


def test_with_nothing_readable_it_says_so():
    with pytest.raises(ShardError, match="every shard of this worker's share was skipped"):
        list(slot_chunks(_order(2), np.array([[0, 24]]), np.arange(0, 7, 3), _reader(bad={0, 1}), where="root"))


def test_consecutive_chunks_on_one_shard_read_it_once_after_the_first():
    """A shard holds many chunks: read once for all of them. The first chunk's files are read on their own, each
    by its byte range, so that the first batch waits for its own files; their shard is then read whole for its
    checks (the reader keeps those bytes for the next run on it: decode.py)."""
    order, reads = _order(3, windows=1, chunk_windows=1), []
    plans = [piece_plan(order, piece, np.arange(0, 10, 3)) for piece in order.pieces(np.array([[0, 9]]))]
    assert len(plans) == 9  # a chunk a file
    groups = list(read_plans(plans, _reader(reads=reads), [], np.full(3, SHARD_FILES)))
    assert [plan for group in groups for plan, _ in group] == plans
    (first_shard, first_ids, alone), (check_shard, check_ids, check_alone) = reads[:2]
    assert alone and len(first_ids) == 1 and (check_shard, check_ids, check_alone) == (first_shard, first_ids, False)
    rest = reads[2:]
    assert [j for j, _, _ in rest] == sorted(set(j for j, _, _ in rest), key=[j for j, _, _ in rest].index)
    assert sorted(i for _, ids, _ in rest for i in ids) == sorted(set(range(9)) - set(first_ids))  # each once
    assert not any(a for _, _, a in rest)


def test_a_first_chunk_of_half_its_shard_or_more_reads_the_shard_whole():
    order, reads = _order(3, windows=1, chunk_windows=2), []  # two files of a shard of three
    plans = [piece_plan(order, piece, np.arange(0, 10, 3)) for piece in order.pieces(np.array([[0, 9]]))]
    list(read_plans(plans, _reader(reads=reads), [], np.full(3, SHARD_FILES)))
    assert not any(alone for _, _, alone in reads)


# ---------------------------------------------------------------- the cursor


def test_cursor_roles_follow_the_dataloader_turns_and_states_are_checked():
    cursor = EpochCursor()
    per_worker = [5, 4, 4]
    cursor.load_state_dict({"epoch": 3, "consumed": 7, "seed": 1}, {"seed": 1}, ("seed",), "dataset")
    assert cursor.epoch == 3 and cursor.consumed == 7
    taken, first = resume_point(7, per_worker)
    for worker in range(3):
        role, skip = cursor.role(worker, 3, 3, lambda n: per_worker)
        assert role == (worker + first) % 3 and skip == taken[role]
    assert cursor.role(0, 3, 4, lambda n: per_worker) == (0, 0)  # another epoch starts from its beginning
    items = list(cursor.track(iter(range(5)), 3, counting=True))
    assert items == list(range(5)) and cursor.consumed == 12 and cursor.resumed_at(3) == 0  # finished
    with pytest.raises(ValueError, match="seed=2"):
        cursor.load_state_dict({"epoch": 0, "consumed": 0, "seed": 2}, {"seed": 1}, ("seed",), "dataset")


# ---------------------------------------------------------------- the public seams


def keys_starts(items) -> List[tuple]:
    return [(k, s) for b in items for k, s in zip(b["key"], b["start"].tolist())]


@pytest.mark.slow
def test_iter_epoch_per_worker_is_what_dataloader_workers_yield(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=NO_MASKS, batch_size=8,
                            num_workers=2, seed=5)
    ds.set_epoch(2)
    from_workers = collections.Counter(keys_starts(DataLoader(ds, batch_size=None, num_workers=2)))
    by_iter_epoch = [keys_starts(ds.iter_epoch(2, w, 2)) for w in (0, 1)]
    assert collections.Counter(by_iter_epoch[0] + by_iter_epoch[1]) == from_workers
    assert [len(w) for w in by_iter_epoch] == [ds.worker_windows(w, 2) for w in (0, 1)]
    assert sum(ds.worker_windows(w, 2) for w in (0, 1)) == ds.num_windows()
    planned = sum(int((r[:, 1] - r[:, 0]).sum()) for w in (0, 1) for r in [ds.plan_epoch(2, w, 2)])
    assert planned == ds.num_windows()


@pytest.mark.parametrize("skip", [0, 1, 7, 8, 13])
def test_iter_epoch_skips_exactly_the_first_windows(run16k, skip):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=NO_MASKS, batch_size=8)
    full = keys_starts(ds.iter_epoch(1))
    assert keys_starts(ds.iter_epoch(1, skip_windows=skip)) == full[skip:]
    assert keys_starts(ds.iter_epoch(1)) == full  # re-entrant: nothing of the dataset changed


@pytest.mark.slow
def test_a_spawned_worker_maps_the_index_again_instead_of_copying_it(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=NO_MASKS, batch_size=8)
    index_bytes = os.path.getsize(os.path.join(run16k[0], "index.bin"))
    state = pickle.dumps(ds.shards)
    assert b"SPGIDX" not in state and len(state) < index_bytes + 10_000
    expected = collections.Counter(keys_starts(ds))
    spawned = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    assert collections.Counter(keys_starts(spawned)) == expected


@pytest.mark.slow
def test_leaving_a_loop_early_and_exiting_is_a_clean_exit(run16k):
    """Read-ahead threads still inside torch when the interpreter exits used to abort the process
    ("terminate called without an active exception"): they are stopped and waited for at exit."""
    import subprocess
    import sys

    code = ("import sys; from spgdataset import SpectrogramDataset; "
            "ds = SpectrogramDataset(sys.argv[1], window_content_ratio=0, batch_size=4, shuffle_buffer=64); "
            "items = iter(ds); next(items); print('ok')")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code, run16k[0]], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
