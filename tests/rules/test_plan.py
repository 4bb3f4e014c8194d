"""Invariants of the epoch plan: ranges partition the epoch, ranks get equal shares, resume points are exact."""

import pytest

from spgdataset.rules.elastic import part_bounds
from spgdataset.rules.plan import resume_point, shard_order


@pytest.mark.parametrize("total", [0, 1, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_slots_partition_the_epoch_with_equal_rank_shares(total, world, workers):
    covered = []
    per_rank = []
    for rank in range(world):
        ranges = [part_bounds(total, rank, world, w, workers) for w in range(workers)]
        per_rank.append(sum(hi - lo for lo, hi in ranges))
        for lo, hi in ranges:
            covered.extend(range(lo, hi))
    assert len(set(per_rank)) == 1
    assert len(covered) == len(set(covered))  # no window twice
    missing = total - len(covered)
    assert missing == (total % world if world > 1 else 0)
    assert covered == list(range(len(covered)))  # contiguous from the start


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
