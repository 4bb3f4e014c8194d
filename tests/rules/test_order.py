"""The epoch's order (spgdataset/rules/order.py): which shards come next after one, as many as hold a chunk."""

from __future__ import annotations

import numpy as np

from spgdataset.rules.order import epoch_order


def test_the_shards_after_one_are_those_whose_files_come_next_a_chunks_worth():
    shard_files = np.array([3, 0, 4, 2, 5])  # shard 1 is empty
    bounds = np.concatenate(([0], np.cumsum(shard_files)))
    counts = np.arange(1, bounds[-1] + 1) % 4 * 10  # some files without windows
    order = epoch_order(bounds, counts, seed=3, epoch=2, shuffle=True, file_buffer=4, chunk_windows=50,
                        first_windows=20)
    ranked = order.shards.tolist()
    per_shard = {j: int(counts[bounds[j] : bounds[j + 1]].sum()) for j in range(len(shard_files))}
    for r, shard in enumerate(ranked):
        for windows in (0, 1, 30, 60, 10**6):
            expected, held = [], 0
            for following in ranked[r + 1 :]:  # at least one; then until `windows` are held; at most 3 here
                if expected and (held >= windows or len(expected) == 3):
                    break
                expected.append(following)
                held += per_shard[following]
            assert order.shards_after(shard, shard_files, windows, most=3) == expected, (shard, windows)
    assert order.shards_after(ranked[-1], shard_files, 100) == []
