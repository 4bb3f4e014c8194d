"""Epoch plans as pure functions of (seed, epoch, window counts, rank, world size, worker, workers).

The epoch's windows form one global sequence: shards in a seeded per-epoch order, files in shard order,
window starts in file order. Each rank takes an equal contiguous range of it (world_size > 1 drops the
last `total % world_size` windows, fewer than world_size, so every rank yields the same count), and each
DataLoader worker an equal contiguous part of its rank's range. Ranges may cut through shards and files:
a shard read by two workers is read twice, but no window is yielded twice and a dataset with one shard
still feeds every rank. Because the plan is a pure function, len() and resume offsets are computed ahead
and every process agrees on them without talking.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import numpy as np

Pieces = np.ndarray  # (m, 3) int64 per shard: file position in the shard's list, first window, end window


def epoch_rng(seed: int, epoch: int, *streams: int) -> np.random.Generator:
    """One independent random stream per (seed, epoch, rank, worker, ...)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, *streams])


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The shard order all ranks agree on for this epoch."""
    if not shuffle:
        return np.arange(num_shards)
    return epoch_rng(seed, epoch).permutation(num_shards)


def rank_windows(total: int, world_size: int) -> int:
    """Windows per rank per epoch: equal on every rank."""
    return total // world_size if world_size > 1 else total


def slot_range(total: int, rank: int, world_size: int, worker: int, num_workers: int) -> Tuple[int, int]:
    """[lo, hi) of the global window sequence for one worker of one rank."""
    per_rank = rank_windows(total, world_size)
    workers = max(num_workers, 1)
    base = rank * per_rank
    return base + worker * per_rank // workers, base + (worker + 1) * per_rank // workers


def slot_pieces(order: Union[Sequence[int], np.ndarray], bounds: np.ndarray, counts: np.ndarray, lo: int,
                hi: int) -> List[Tuple[int, Pieces]]:
    """The shards (in `order`) and file window ranges that make up global windows [lo, hi).

    `counts` are the window counts of every file, shard by shard; shard k's are counts[bounds[k]:bounds[k + 1]].
    Only the shards that overlap [lo, hi) are looked at file by file; their pieces are arrays (24 bytes a file,
    not a Python tuple each: a worker's plan of a million-file epoch stays small).
    """
    order = np.asarray(order, dtype=np.int64)
    cumulative = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
    totals = (cumulative[bounds[1:]] - cumulative[bounds[:-1]])[order]
    ends = np.cumsum(totals)
    first, last = int(np.searchsorted(ends, lo, side="right")), int(np.searchsorted(ends - totals, hi, side="left"))
    out: List[Tuple[int, Pieces]] = []
    for j in range(first, last):
        k = int(order[j])
        shard_counts = counts[bounds[k] : bounds[k + 1]]
        file_ends = (ends[j] - totals[j]) + np.cumsum(shard_counts)
        a = np.maximum(lo - (file_ends - shard_counts), 0)
        b = np.minimum(hi - (file_ends - shard_counts), shard_counts)
        files = np.flatnonzero(a < b)
        if len(files):
            out.append((k, np.stack([files, a[files], b[files]], axis=1).astype(np.int64)))
    return out


def batches(windows: int, batch_size: int, drop_last: bool) -> int:
    return windows // batch_size if drop_last else math.ceil(windows / batch_size)


def resume_point(consumed: int, batches_per_worker: Sequence[int]) -> Tuple[List[int], int]:
    """(batches each worker had delivered, worker whose turn is next) after a DataLoader yielded `consumed`.

    A DataLoader takes batches from its workers in turn, skipping exhausted ones. A resumed DataLoader
    starts again at worker 0, so workers take on rotated roles: worker i plays worker (i + next) % n.
    """
    n = len(batches_per_worker)
    left, taken = list(batches_per_worker), [0] * n
    w, remaining = 0, min(consumed, sum(left))
    while remaining > 0:
        if left[w]:
            left[w] -= 1
            taken[w] += 1
            remaining -= 1
        w = (w + 1) % n
    for _ in range(n):  # the next turn goes to a worker that still has batches
        if left[w]:
            break
        w = (w + 1) % n
    return taken, w
