"""The reader's stages and seams on their own: restrict, planned_files (with fill-in), shuffle_files, the epoch
cursor, and the public surface the router uses (iter_epoch, worker_windows, plan_epoch)."""

from __future__ import annotations

import collections
import os
import pickle
from typing import Dict, List, Optional

import numpy as np
import pytest
from torch.utils.data import DataLoader

from spgdataset import ShardError, SpectrogramDataset
from spgdataset.read.records import FileRecord
from spgdataset.read.cursor import EpochCursor
from spgdataset.read.stages import planned_files, restrict, shuffle_files
from spgdataset.rules.plan import resume_point
from tests.helpers import NO_MASKS


def record(key: str, windows: int) -> FileRecord:
    return FileRecord(key, key + ".wav", np.zeros((2, 3), np.float16), {}, {}, np.arange(windows) * 10)


def pieces(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


# ---------------------------------------------------------------- stages


def test_restrict_cuts_each_file_to_its_planned_windows():
    records = [record("a", 5), record("b", 4)]
    out = list(restrict(records, pieces((0, 1, 3), (1, 0, 4))))
    assert [r.starts.tolist() for r in out] == [[10, 20], [0, 10, 20, 30]]


def _shards(n: int) -> Dict[int, List[FileRecord]]:
    return {k: [record(f"s{k}f{i}", 4) for i in range(2)] for k in range(n)}


def test_planned_files_reads_in_plan_order_and_fills_in_skipped_windows():
    shards, bad, reads = _shards(4), {2}, []

    def read(k: int, p: np.ndarray) -> Optional[List[FileRecord]]:
        reads.append(k)  # a reader returns the planned files of the shard, in its order
        return None if k in bad else [shards[k][i] for i in p[:, 0]]

    plan = [(3, pieces((0, 0, 4), (1, 0, 4))), (2, pieces((0, 1, 4), (1, 0, 2))), (0, pieces((1, 2, 4)))]
    filled = []
    out = list(planned_files(plan, read, filled.append, "here"))
    windows = [(r.key, s) for r in out for s in r.starts.tolist()]
    planned = 8 + 5 + 2
    assert len(windows) == planned  # every planned window is yielded, the skipped shard's made up
    assert not any(k.startswith("s2") for k, _ in windows)
    assert windows[:10] == [(f"s3f{i}", s) for i in range(2) for s in (0, 10, 20, 30)] + [("s0f1", 20), ("s0f1", 30)]
    assert windows[10:] == [("s3f0", s) for s in (0, 10, 20, 30)] + [("s3f1", 0)]  # repeats, in plan order
    assert sum(filled) == 5 and reads[:3] == [3, 2, 0]


def test_planned_files_with_nothing_readable_says_so():
    with pytest.raises(ShardError, match="every shard of this worker's share was skipped"):
        list(planned_files([(0, pieces((0, 0, 3)))], lambda k, p: None, lambda n: None, "root"))


def test_shuffle_files_is_a_seeded_permutation():
    files = [record(str(i), 1) for i in range(100)]
    a = [r.key for r in shuffle_files(iter(files), 10, seed=4)]
    assert sorted(a, key=int) == [r.key for r in files] and a != [r.key for r in files]
    assert a == [r.key for r in shuffle_files(iter(files), 10, seed=4)]
    assert a != [r.key for r in shuffle_files(iter(files), 10, seed=5)]


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
    planned = sum(int((p[:, 2] - p[:, 1]).sum()) for w in (0, 1) for _, p in ds.plan_epoch(2, w, 2))
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
