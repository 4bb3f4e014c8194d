"""The ramp of chunk sizes (read/chunks.py, file_groups): a small first chunk so that the first batch waits for a
few files, not for a full shuffle buffer; each next chunk four times larger up to `shuffle_buffer`; every chunk
of the ramp mixing at least RAMP_FILES files. Real shards for the first-batch test (tests/helpers.py)."""

from __future__ import annotations

import numpy as np
import torch

from spgdataset import SpectrogramDataset
from spgdataset.read.chunks import RAMP_FILES, file_groups
from spgdataset.read.records import FileRecord


def records(windows_per_file):
    return [FileRecord(f"k{i}", f"f{i}.wav", np.zeros((1, 1), np.float32), {}, {}, np.arange(n))
            for i, n in enumerate(windows_per_file)]


def test_chunks_grow_fourfold_from_the_first_and_hold_enough_files():
    groups = list(file_groups(iter(records([10] * 400)), chunk_windows=1000, first_windows=40))
    sizes = [sum(len(f.starts) for f in g) for g in groups]
    # 40 windows would be 4 files: a ramp chunk holds RAMP_FILES; then 160, 640, then full chunks of 1000
    assert sizes[:4] == [10 * RAMP_FILES, 160, 640, 1000] and set(sizes[4:-1]) == {1000}
    assert sum(sizes) == 4000 and [f.key for g in groups for f in g] == [f"k{i}" for i in range(400)]


def test_long_files_are_chunked_as_without_the_ramp():
    """A file of more windows than the first target still needs RAMP_FILES files in its chunk, or a full one."""
    groups = list(file_groups(iter(records([3000] * 10)), chunk_windows=10000, first_windows=256))
    assert [len(g) for g in groups] == [4, 4, 2]
    without = list(file_groups(iter(records([3000] * 10)), chunk_windows=10000))
    assert [len(g) for g in without] == [4, 4, 2]


def test_files_without_windows_are_left_out_and_no_ramp_is_the_old_grouping():
    groups = list(file_groups(iter(records([5, 0, 7, 0, 9])), chunk_windows=12))
    assert [[f.key for f in g] for g in groups] == [["k0", "k2"], ["k4"]]


def test_the_first_batch_mixes_several_files_and_the_epoch_is_whole(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, batch_size=8, shuffle=True,
                            output_configuration={"masks": []})
    batches = list(ds)
    first = batches[0]
    assert len(set(first["key"])) >= 3  # 8 windows drawn from a first chunk of RAMP_FILES files, not one file
    seen = sorted((k, int(s)) for b in batches for k, s in zip(b["key"], b["start"].tolist()))
    expected = sorted(SpectrogramDataset(run16k[0], window_content_ratio=0, shuffle=False).windows())
    assert seen == expected and isinstance(first["spectrogram"], torch.Tensor)
