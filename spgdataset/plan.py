"""Epoch plans as pure functions of (seed, epoch, shard count, rank, world size, worker, workers).

Shards are ordered per epoch by a seeded permutation, dealt round-robin to ranks, then to each rank's
DataLoader workers. Because the plan is a pure function, len() can be computed ahead from the index,
and every process agrees on it without talking.
"""

from __future__ import annotations

from typing import List

import numpy as np


def epoch_rng(seed: int, epoch: int, *streams: int) -> np.random.Generator:
    """One independent random stream per (seed, epoch, rank, worker, ...)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, *streams])


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order all ranks agree on for this epoch."""
    if not shuffle:
        return np.arange(num_shards)
    return epoch_rng(seed, epoch).permutation(num_shards)


def shards_for(num_shards: int, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
               worker: int, num_workers: int, fixed_assignment: bool = False) -> List[int]:
    """Shard numbers read by one worker of one rank in this epoch.

    With `fixed_assignment` a worker keeps the same shards every epoch (only their order changes), which
    is what lets a per-worker memory cache serve later epochs without reading shards again.
    """
    order = shard_order(num_shards, seed, 0 if fixed_assignment else epoch, shuffle)
    mine = order[rank::world_size][worker::max(num_workers, 1)]
    if fixed_assignment and shuffle:
        mine = mine[epoch_rng(seed, epoch, rank, worker).permutation(len(mine))]
    return [int(k) for k in mine]
