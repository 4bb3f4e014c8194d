"""The ramp of chunk sizes (rules/order.py, chunk_bounds): a small first chunk so that the first batch waits for a
few files, not for a full shuffle buffer; each next chunk four times larger up to `shuffle_buffer`; every chunk
of the ramp mixing at least RAMP_FILES files. Real shards for the first-batch test (tests/helpers.py)."""

from __future__ import annotations

import numpy as np
import torch

from spgdataset import SpectrogramDataset
from spgdataset.rules.order import RAMP_FILES, chunk_bounds


def groups(windows_per_file, chunk_windows, first_windows=None):
    """The chunks as lists of (file position, windows), files without windows left out."""
    counts = np.array(windows_per_file, dtype=np.int64)
    bounds = chunk_bounds(counts, chunk_windows, first_windows or chunk_windows).tolist()
    chunks = [[(i, int(counts[i])) for i in range(a, b) if counts[i]] for a, b in zip(bounds, bounds[1:])]
    assert bounds[0] == 0 and bounds[-1] == len(counts)
    return [c for c in chunks if c]


def test_chunks_grow_fourfold_from_the_first_and_hold_enough_files():
    chunks = groups([10] * 400, chunk_windows=1000, first_windows=40)
    sizes = [sum(n for _, n in c) for c in chunks]
    # 40 windows would be 4 files: a ramp chunk holds RAMP_FILES; then 160, 640, then full chunks of 1000
    assert sizes[:4] == [10 * RAMP_FILES, 160, 640, 1000] and set(sizes[4:-1]) == {1000}
    assert sum(sizes) == 4000 and [i for c in chunks for i, _ in c] == list(range(400))


def test_long_files_are_chunked_as_without_the_ramp():
    """A file of more windows than the first target still needs RAMP_FILES files in its chunk, or a full one."""
    assert [len(c) for c in groups([3000] * 10, chunk_windows=10000, first_windows=256)] == [4, 4, 2]
    assert [len(c) for c in groups([3000] * 10, chunk_windows=10000)] == [4, 4, 2]


def test_files_without_windows_are_left_out_and_no_ramp_is_the_old_grouping():
    assert [[i for i, _ in c] for c in groups([5, 0, 7, 0, 9], chunk_windows=12)] == [[0, 2], [4]]
    assert chunk_bounds(np.zeros(0, dtype=np.int64), 12, 12).tolist() == [0, 0]


def test_the_first_batch_mixes_several_files_and_the_epoch_is_whole(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, batch_size=8, shuffle=True,
                            output_configuration={"masks": []})
    batches = list(ds)
    first = batches[0]
    assert len(set(first["key"])) >= 3  # 8 windows drawn from a first chunk of RAMP_FILES files, not one file
    seen = sorted((k, int(s)) for b in batches for k, s in zip(b["key"], b["start"].tolist()))
    expected = sorted(SpectrogramDataset(run16k[0], window_content_ratio=0, shuffle=False).windows())
    assert seen == expected and isinstance(first["spectrogram"], torch.Tensor)
