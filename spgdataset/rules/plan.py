"""The epoch plan's small pure parts: random streams, the shard order, batch counts, resume points.

The epoch's order is rules/order.py; who reads which range of it, rules/elastic.py. Because the plan is made of
pure functions, len() and resume offsets are computed ahead and every process agrees on them without talking.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np

def epoch_rng(seed: int, epoch: int, *streams: int) -> np.random.Generator:
    """One independent random stream per (seed, epoch, rank, worker, ...)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, *streams])


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The shard order all ranks agree on for this epoch."""
    if not shuffle:
        return np.arange(num_shards)
    return epoch_rng(seed, epoch).permutation(num_shards)


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
