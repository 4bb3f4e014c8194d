"""The router's schedule, as pure functions: which dataset the n-th window of an epoch comes from.

Stride scheduling: with weights w_i normalised to sum 1 and a phase p_i in [0, 1), dataset i's k-th window
gets the virtual time (k + p_i) / w_i, and windows are served in the order of (time, i). Why:

- Rates are exact up to rounding. Any prefix of n windows holds n * w_i windows of dataset i give or
  take less than 1 + d * w_i (d datasets): a window or two. Random draws would be off by about
  sqrt(n * w_i), and what a batch holds would be a lottery.
- The sequence is a pure function of (seed, epoch, worker, weights, the datasets' window counts): the
  phases come from `plan.epoch_rng(seed, epoch, worker, ...)`. So `len()` is computed ahead, a resumed
  epoch replays the schedule to find where it was, and the same seed and epoch give the same sequence.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..rules.plan import epoch_rng

STOP_POLICIES = ("first_exhausted", "all_exhausted", "resample")
SCHEDULE_BLOCK = 8192  # virtual time per generated block of the schedule: about this many windows
_PHASE_STREAM = 101  # keeps the router's random stream apart from the datasets' (seed, epoch, rank, worker, k)


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights as rates that sum to 1; zero leaves a dataset out."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    return w / w.sum()


def schedule_phases(seed: int, epoch: int, worker: int, num_datasets: int) -> np.ndarray:
    """Phases in [0, 1): from (seed, epoch, worker), the same on every rank (see the module docstring)."""
    return epoch_rng(seed, epoch, worker, _PHASE_STREAM).random(num_datasets)


def window_time(k: int, phase: float, weight: float) -> float:
    """Virtual time of a dataset's k-th window (0-based)."""
    return (k + phase) / weight


def count_before(t: float, phase: float, weight: float, inclusive: bool = False) -> int:
    """How many of a dataset's windows have a virtual time < t (<= t with `inclusive`).

    The closed form is checked against `window_time` itself, so the count agrees exactly with the float
    comparisons that order the schedule.
    """
    if weight <= 0:
        return 0

    def before(k: int) -> bool:
        x = window_time(k, phase, weight)
        return x <= t if inclusive else x < t

    c = max(int(math.ceil(t * weight - phase)), 0)
    while c > 0 and not before(c - 1):
        c -= 1
    while before(c):
        c += 1
    return c


def stop_limits(windows: Sequence[int], weights: np.ndarray, phases: np.ndarray,
                stop: str) -> List[Optional[int]]:
    """Windows each dataset contributes to one worker's epoch (None: unlimited, for "resample")."""
    if stop == "resample":
        return [None if w > 0 else 0 for w in weights]
    if stop == "all_exhausted":
        return [int(n) if w > 0 else 0 for n, w in zip(windows, weights)]
    if stop != "first_exhausted":
        raise ValueError(f"stop must be one of {STOP_POLICIES}, got {stop!r}")
    active = [i for i, w in enumerate(weights) if w > 0]
    # the first window (in schedule order) that does not exist: dataset i's windows[i]-th
    t_stop, i_stop = min((window_time(windows[i], phases[i], weights[i]), i) for i in active)
    return [min(count_before(t_stop, phases[j], weights[j], inclusive=j < i_stop), int(windows[j]))
            if weights[j] > 0 else 0 for j in range(len(weights))]


def _more(limit: Optional[int], done: int) -> bool:
    """A dataset has windows left past `done` under `limit` (None: no limit)."""
    return limit is None or limit > done


def schedule(weights: np.ndarray, phases: np.ndarray, limits: Sequence[Optional[int]],
             total: Optional[int] = None, block: int = SCHEDULE_BLOCK) -> Iterator[np.ndarray]:
    """Dataset index of each window of the epoch, in order, as consecutive int64 blocks.

    Dataset i contributes its windows 0..limits[i]-1 (all of them when None), in the order of
    (window_time, i); the whole sequence stops after `total` windows when given.
    """
    d = len(weights)
    done = [0] * d
    active = [i for i in range(d) if weights[i] > 0 and _more(limits[i], 0)]
    emitted, t = 0, 0.0
    while active and (total is None or emitted < total):
        upcoming = min(window_time(done[i], phases[i], weights[i]) for i in active)
        t = max(t, float(math.floor(upcoming)))  # jump over stretches where no dataset has a window
        t_next = t + block
        ids, times = [], []
        for i in active:
            hi, limit = count_before(t_next, phases[i], weights[i]), limits[i]
            if limit is not None:
                hi = min(hi, limit)
            k = np.arange(done[i], hi, dtype=np.float64)
            times.append((k + phases[i]) / weights[i])
            ids.append(np.full(len(k), i, dtype=np.int64))
            done[i] = hi
        all_ids, all_times = np.concatenate(ids), np.concatenate(times)
        out = all_ids[np.lexsort((all_ids, all_times))]
        if total is not None:
            out = out[: total - emitted]
        emitted += len(out)
        if len(out):
            yield out
        active = [i for i in active if _more(limits[i], done[i])]
        t = t_next


def skip_schedule(blocks: Iterable[np.ndarray], n: int, num_datasets: int) -> Tuple[np.ndarray, Iterator[np.ndarray]]:
    """(windows of each dataset among the first n of the schedule, the rest of the schedule)."""
    counts = np.zeros(num_datasets, dtype=np.int64)
    blocks = iter(blocks)
    for block in blocks:
        if n < len(block):
            counts += np.bincount(block[:n], minlength=num_datasets)
            return counts, itertools.chain([block[n:]], blocks)
        counts += np.bincount(block, minlength=num_datasets)
        n -= len(block)
    return counts, iter(())


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The schedule in pieces of exactly `size` windows (the last may be shorter): one per batch."""
    pending = np.zeros(0, dtype=np.int64)
    for block in blocks:
        pending = np.concatenate([pending, block]) if len(pending) else block
        full = len(pending) // size * size
        for lo in range(0, full, size):
            yield pending[lo : lo + size]
        pending = pending[full:]
    if len(pending):
        yield pending
