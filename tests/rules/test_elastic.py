"""Invariants of elastic resume: stages share out what the stages before left, no window is yielded twice, and the
only windows never yielded are the ones each stage's rule leaves out."""

import numpy as np
import pytest

from spgdataset.rules.elastic import (
    Stage,
    cut,
    length_of,
    part_bounds,
    rank_share,
    slot_ranges,
    stage_sequence,
    taken_windows,
    worker_windows,
)
from spgdataset.rules.plan import batches, resume_point


def slot_range(total, rank, world, worker, workers):
    """The plan of one stage, as it was before stages existed (kept here as the reference)."""
    per_rank = total // world if world > 1 else total
    workers = max(workers, 1)
    return rank * per_rank + worker * per_rank // workers, rank * per_rank + (worker + 1) * per_rank // workers


def windows_of(ranges):
    """The windows of the canonical order that `ranges` cover, in order."""
    return [w for lo, hi in np.asarray(ranges).reshape(-1, 2) for w in range(int(lo), int(hi))]


@pytest.mark.parametrize("total", [0, 1, 2, 3, 7, 100, 1001])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("workers", [0, 1, 2, 3, 4])
def test_first_stage_is_the_plain_plan(total, world, workers):
    """Without history a worker's ranges are exactly the plan before stages (total 0 and total < world included)."""
    for rank in range(world):
        for worker in range(max(workers, 1)):
            ranges = slot_ranges(total, [], rank, world, worker, workers)
            lo, hi = slot_range(total, rank, world, worker, workers)
            assert ranges.shape[1] == 2 and len(ranges) <= 1  # one contiguous range, or none
            assert windows_of(ranges) == list(range(lo, hi))
    expected = [hi - lo for lo, hi in (slot_range(total, 0, world, w, workers) for w in range(max(workers, 1)))]
    assert worker_windows(total, [], world, workers) == expected


def run_chain(rng):
    """A random epoch: 1 to 4 stopped stages, then a final stage run to its end. Checks every stage as it goes and
    returns (total, windows yielded over all stages, windows trimmed, windows dropped, expected missing count)."""
    total = int(rng.integers(0, 200)) if rng.random() > 0.05 else 0
    history, yielded, trimmed, dropped = [], [], set(), set()
    length, expected_missing = total, 0  # the stage's sequence length, computed by hand from the counts
    n_stages = int(rng.integers(1, 5)) + 1
    for s in range(n_stages):
        final = s == n_stages - 1
        world, workers = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        bs, drop_last = int(rng.integers(1, 8)), bool(rng.integers(0, 2))
        sequence = stage_sequence(total, history)
        assert length_of(sequence) == length
        # (c) the windows this stage's rule leaves out: the tail of its sequence past world * per-rank share
        share = rank_share(length, world)
        trim = set(windows_of(cut(sequence, world * share, length)))
        assert len(trim) == (length % world if world > 1 else 0) < max(world, 2)
        trimmed |= trim
        expected_missing += len(trim)
        windows = worker_windows(total, history, world, workers)
        items = [batches(n, bs, drop_last) for n in windows]
        if final:
            taken_items = items
        else:
            taken_items, _ = resume_point(int(rng.integers(0, sum(items) + 1)), items)
        taken = taken_windows(taken_items, windows, bs)
        assert all(0 <= t <= n for t, n in zip(taken, windows))
        rank_windows, rank_items = set(), set()
        for rank in range(world):
            slots = [windows_of(slot_ranges(total, history, rank, world, w, workers)) for w in range(workers)]
            # (b) every rank has the same windows per worker, hence the same windows and items per stage
            assert [len(slot) for slot in slots] == windows
            rank_windows.add(sum(taken))
            rank_items.add(sum(batches(len(slot), bs, drop_last) for slot in slots))
            for slot, t in zip(slots, taken):
                yielded.extend(slot[:t])
                if final:
                    dropped |= set(slot[t:])
        assert len(rank_windows) == 1 and len(rank_items) == 1
        if final:
            missing_tail = world * sum(n % bs for n in windows) if drop_last else 0
            assert len(dropped) == missing_tail
            expected_missing += missing_tail
        else:
            history.append(Stage(world, workers, taken))
            length = length - len(trim) - world * sum(taken)
    return total, yielded, trimmed, dropped, expected_missing


def test_random_stage_chains_yield_every_window_once_up_to_the_rules():
    """300 random epochs, stopped after random consumption (as a DataLoader and resume_point produce it) and resumed
    on random layouts: no window twice, equal ranks, and the windows never yielded are exactly the ones trimmed to
    equal rank shares plus, with drop_last, the final stage's partial batch tails."""
    rng = np.random.default_rng(20240611)
    for _ in range(300):
        total, yielded, trimmed, dropped, expected_missing = run_chain(rng)
        assert all(0 <= w < total for w in yielded)
        assert len(yielded) == len(set(yielded))  # (a) no window twice
        missing = set(range(total)) - set(yielded)
        assert not trimmed & dropped
        assert missing == trimmed | dropped  # (c) only the windows the rules leave out
        assert len(missing) == expected_missing
        assert len(yielded) == total - expected_missing  # (d)


def test_resume_hand_computed_ranges():
    """Small resumes written out: the rest of each old slot, old slot after old slot, shared out again."""
    # 2 ranks x 2 workers over 20: [0,5) [5,10) | [10,15) [15,20); workers took 3 and 1 windows
    first = [Stage(2, 2, (3, 1))]
    assert stage_sequence(20, first).tolist() == [[3, 5], [6, 10], [13, 15], [16, 20]]
    # onto 3 ranks x 1 worker: 12 windows, 4 a rank
    assert slot_ranges(20, first, 0, 3, 0, 1).tolist() == [[3, 5], [6, 8]]
    assert slot_ranges(20, first, 1, 3, 0, 1).tolist() == [[8, 10], [13, 15]]
    assert slot_ranges(20, first, 2, 3, 0, 1).tolist() == [[16, 20]]
    # onto the same layout again: 6 a rank, 3 a worker
    assert slot_ranges(20, first, 0, 2, 0, 2).tolist() == [[3, 5], [6, 7]]
    assert slot_ranges(20, first, 0, 2, 1, 2).tolist() == [[7, 10]]
    assert slot_ranges(20, first, 1, 2, 0, 2).tolist() == [[13, 15], [16, 17]]
    assert slot_ranges(20, first, 1, 2, 1, 2).tolist() == [[17, 20]]
    assert worker_windows(20, first, 2, 2) == [3, 3]
    # that same layout stopped after 1 and 2 windows a worker, then 3 x 1
    second = first + [Stage(2, 2, (1, 2))]
    assert stage_sequence(20, second).tolist() == [[4, 5], [6, 7], [9, 10], [14, 15], [16, 17], [19, 20]]
    assert slot_ranges(20, second, 0, 3, 0, 1).tolist() == [[4, 5], [6, 7]]
    assert slot_ranges(20, second, 1, 3, 0, 1).tolist() == [[9, 10], [14, 15]]
    assert slot_ranges(20, second, 2, 3, 0, 1).tolist() == [[16, 17], [19, 20]]
    # 3 ranks trim 20 to 18 ([18, 20) is never yielded), each took 2, then 2 x 1
    trimmed = [Stage(3, 1, (2,))]
    assert stage_sequence(20, trimmed).tolist() == [[2, 6], [8, 12], [14, 18]]
    assert slot_ranges(20, trimmed, 0, 2, 0, 1).tolist() == [[2, 6], [8, 10]]
    assert slot_ranges(20, trimmed, 1, 2, 0, 1).tolist() == [[10, 12], [14, 18]]


def test_taken_beyond_a_workers_windows_raises():
    """A stage cannot have taken more windows than its worker had."""
    with pytest.raises(ValueError):
        stage_sequence(20, [Stage(2, 2, (6, 0))])  # worker 0 of each rank had 5
    with pytest.raises(ValueError):
        stage_sequence(20, [Stage(2, 2, (3, 1)), Stage(1, 1, (13,))])  # 12 left
    with pytest.raises(ValueError):
        slot_ranges(7, [Stage(2, 1, (4,))], 0, 1, 0, 1)  # 7 on 2 ranks: 3 a rank
    stage_sequence(20, [Stage(2, 2, (5, 5))])  # all taken is fine


def test_stage_sequence_at_scale():
    """A 360M-window epoch on 1000 ranks x 8 workers, each having taken 5: 8000 ranges, no list of windows."""
    total = 360_000_000
    history = [Stage(1000, 8, (5,) * 8)]
    sequence = stage_sequence(total, history)
    assert sequence.shape == (8000, 2)
    trimmed = total % 1000  # 0 here: 360000 a rank, 45000 a worker
    assert length_of(sequence) == total - 5 * 8000 - trimmed
    assert sequence[0].tolist() == [5, 45_000] and sequence[-1].tolist() == [total - 45_000 + 5, total]
    lo, hi = part_bounds(length_of(sequence), 999, 1000, 7, 8)
    assert length_of(slot_ranges(total, history, 999, 1000, 7, 8)) == hi - lo
