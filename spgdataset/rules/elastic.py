"""Who reads what of an epoch, stage by stage: an epoch resumed on another number of ranks or workers.

An epoch's windows have one canonical order, a function of (seed, epoch) alone (rules/order.py). A *stage* is a
run of the epoch under one layout (world size x DataLoader workers); it shares out a sequence of ranges of that
order: the whole epoch for the first stage, and for each later one what the stage before left. Each rank takes an
equal contiguous part of the sequence (world_size > 1 leaves the last `length % world_size` windows out, fewer than
world_size, so every rank yields the same count) and each worker an equal contiguous part of its rank's.

A stage ends when a run is stopped; what each of its workers had delivered by then (`Stage.taken`, windows, the
same on every rank since all ranks yield the same count) is the prefix of its ranges that was consumed. The next
stage shares out the rest, old slot after old slot, whatever its layout: every window of the epoch is then
yielded once over all stages, up to the windows each stage's rule leaves out. What a saved state needs to say
where an epoch is: the layouts and counts of its stages, a few integers each (no list of windows).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

Ranges = np.ndarray  # (m, 2) int64: [lo, hi) ranges of the epoch's canonical order, in the order they are yielded


class Stage(NamedTuple):
    """A finished run of an epoch: its world size, DataLoader workers per rank (at least 1), and the windows each
    worker had delivered (the same on every rank)."""

    world: int
    workers: int
    taken: Tuple[int, ...]


def rank_share(length: int, world: int) -> int:
    """Windows per rank of a sequence of `length`: equal on every rank."""
    return length // world if world > 1 else length


def part_bounds(length: int, rank: int, world: int, worker: int, workers: int) -> Tuple[int, int]:
    """[lo, hi) of a sequence of `length` for one worker of one rank."""
    per_rank, workers = rank_share(length, world), max(workers, 1)
    base = rank * per_rank
    return base + worker * per_rank // workers, base + (worker + 1) * per_rank // workers


def cut(sequence: Ranges, lo: int, hi: int, ends: Optional[np.ndarray] = None) -> Ranges:
    """Windows lo..hi of `sequence` (counted along it) as ranges of the canonical order; `ends`: the cumulative
    lengths of `sequence`, when the caller cuts it many times."""
    if ends is None:
        ends = np.cumsum(sequence[:, 1] - sequence[:, 0])
    if hi <= lo:
        return np.zeros((0, 2), dtype=np.int64)
    first, last = int(np.searchsorted(ends, lo, side="right")), int(np.searchsorted(ends, hi, side="left"))
    part = sequence[first : last + 1].copy()
    starts = ends[first : last + 1] - (part[:, 1] - part[:, 0])
    part[0, 0] += lo - starts[0]
    part[-1, 1] -= ends[last] - hi
    return part


def length_of(ranges: Ranges) -> int:
    return int((ranges[:, 1] - ranges[:, 0]).sum())


def stage_sequence(total: int, history: Sequence[Stage]) -> Ranges:
    """The ranges the stage after `history` shares out: all `total` windows first, then what each stage left."""
    sequence = np.array([[0, total]], dtype=np.int64)
    for stage in history:
        ends = np.cumsum(sequence[:, 1] - sequence[:, 0])
        length = int(ends[-1]) if len(ends) else 0
        rest: List[Ranges] = []
        for rank in range(stage.world):
            for worker in range(stage.workers):
                lo, hi = part_bounds(length, rank, stage.world, worker, stage.workers)
                if stage.taken[worker] > hi - lo:
                    raise ValueError(f"a stage's worker {worker} took {stage.taken[worker]} windows of {hi - lo}")
                rest.append(cut(sequence, lo + stage.taken[worker], hi, ends))
        sequence = np.concatenate(rest) if rest else np.zeros((0, 2), dtype=np.int64)
        sequence = sequence[sequence[:, 1] > sequence[:, 0]]
    return sequence


def slot_ranges(total: int, history: Sequence[Stage], rank: int, world: int, worker: int, workers: int) -> Ranges:
    """The ranges of the canonical order worker `worker` of rank `rank` yields in the stage after `history`."""
    sequence = stage_sequence(total, history)
    return cut(sequence, *part_bounds(length_of(sequence), rank, world, worker, workers))


def worker_windows(total: int, history: Sequence[Stage], world: int, workers: int) -> List[int]:
    """Windows each worker of a rank yields in the stage after `history` (the same on every rank)."""
    length = length_of(stage_sequence(total, history))
    return [hi - lo for lo, hi in (part_bounds(length, 0, world, w, workers) for w in range(max(workers, 1)))]


def taken_windows(taken_items: Sequence[int], windows: Sequence[int], batch_size: int) -> Tuple[int, ...]:
    """Windows each worker had delivered, from its items (batches of `batch_size`, the last maybe partial)."""
    return tuple(min(items * batch_size, n) for items, n in zip(taken_items, windows))
