"""Invariants of the epoch plan: ranges partition the epoch, ranks get equal shares, resume points are exact."""

import numpy as np
import pytest

from spgdataset.rules.plan import resume_point, shard_order, slot_pieces, slot_range


@pytest.mark.parametrize("total", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_slots_partition_the_epoch_with_equal_rank_shares(total, world, workers):
    covered = []
    per_rank = []
    for rank in range(world):
        ranges = [slot_range(total, rank, world, w, workers) for w in range(workers)]
        per_rank.append(sum(hi - lo for lo, hi in ranges))
        for lo, hi in ranges:
            covered.extend(range(lo, hi))
    assert len(set(per_rank)) == 1
    assert len(covered) == len(set(covered))  # no window twice
    missing = total - len(covered)
    assert missing == (total % world if world > 1 else 0)
    assert covered == list(range(len(covered)))  # contiguous from the start


@pytest.mark.parametrize("seed", range(8))
def test_slot_pieces_cut_through_shards_and_files(seed):
    rng = np.random.default_rng(seed)
    files = [list(rng.integers(0, 9, size=rng.integers(0, 5))) for _ in range(9)]  # empty shards too
    order = shard_order(len(files), seed=1, epoch=2, shuffle=True)
    sequence = [(k, i, j) for k in order for i, n in enumerate(files[k]) for j in range(n)]
    ranges = [(0, len(sequence)), (len(sequence), len(sequence))]
    ranges += [tuple(sorted(rng.integers(0, len(sequence) + 1, size=2))) for _ in range(20)]
    for lo, hi in ranges:
        bounds = np.concatenate(([0], np.cumsum([len(f) for f in files])))
        counts = np.array([n for f in files for n in f], dtype=np.int64)
        got = [(k, i, j) for k, pieces in slot_pieces(order, bounds, counts, lo, hi)
               for i, a, b in pieces for j in range(a, b)]
        assert got == sequence[lo:hi]


def test_shard_order_is_a_seeded_permutation():
    a = shard_order(50, seed=3, epoch=1, shuffle=True)
    assert sorted(a) == list(range(50))
    assert (a == shard_order(50, seed=3, epoch=1, shuffle=True)).all()
    assert not (a == shard_order(50, seed=3, epoch=2, shuffle=True)).all()
    assert list(shard_order(5, seed=3, epoch=1, shuffle=False)) == [0, 1, 2, 3, 4]


def dataloader_order(counts):
    """The order a DataLoader takes batches from workers: round robin, skipping exhausted workers."""
    left, order, w = list(counts), [], 0
    while any(left):
        if left[w]:
            order.append(w)
            left[w] -= 1
        w = (w + 1) % len(counts)
    return order


@pytest.mark.parametrize("counts", [[5], [4, 4], [5, 4], [3, 5, 4], [0, 2], [1, 0, 3]])
def test_resume_point_matches_the_dataloader_order(counts):
    order = dataloader_order(counts)
    for consumed in range(len(order) + 1):
        taken, first = resume_point(consumed, counts)
        assert taken == [order[:consumed].count(w) for w in range(len(counts))]
        if consumed < len(order):
            # a fresh DataLoader starts at worker 0, which plays worker `first`: the rotated order of the
            # remaining batches must be the original remaining order
            remaining = [c - t for c, t in zip(counts, taken)]
            n = len(counts)
            rotated = [remaining[(i + first) % n] for i in range(n)]
            assert [(w + first) % n for w in dataloader_order(rotated)] == order[consumed:]
