"""Chunk memory (spgdataset/memory.py): lent again only when released, backed by huge pages where offered."""

from __future__ import annotations

import os

import pytest
import torch

from spgdataset.read.memory import HUGE_PAGE, ChunkMemory, huge_page_bytes


def storage_of(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def test_a_buffer_is_lent_again_only_when_nothing_refers_to_it():
    memory = ChunkMemory(keep=3)
    first = memory.empty((80, 1000), torch.float32)
    first.fill_(1.0)
    view = first[:, 10:20]
    del first
    second = memory.empty((80, 1000), torch.float32)  # the view still holds the first buffer
    assert storage_of(second) != storage_of(view)
    assert bool((view == 1.0).all())
    del view
    third = memory.empty((80, 900), torch.float16)  # released: lent again, whatever the dtype and shape
    assert storage_of(third) in {b.data_ptr() for b in memory.buffers}
    assert storage_of(third) != storage_of(second)
    assert third.shape == (80, 900) and third.dtype == torch.float16 and third.is_contiguous()


def test_at_most_keep_buffers_are_kept_and_held_ones_stay_valid():
    memory = ChunkMemory(keep=2)
    held = [memory.empty((80, 500), torch.float32) for _ in range(4)]
    for i, tensor in enumerate(held):
        tensor.fill_(float(i))
    assert len(memory.buffers) == 2
    assert [float(t[0, 0]) for t in held] == [0.0, 1.0, 2.0, 3.0]
    del held
    big = memory.empty((80, 8000), torch.float32)  # larger than any kept buffer: a new one replaces a released one
    assert len(memory.buffers) == 2 and storage_of(big) in {b.data_ptr() for b in memory.buffers}


def test_a_pickled_pool_starts_empty():
    import pickle

    memory = ChunkMemory(keep=5)
    memory.empty((10, 10), torch.float32)
    copy = pickle.loads(pickle.dumps(memory))
    assert copy.keep == 5 and copy.buffers == []


def _huge_pages_enabled() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_enabled(), reason="no transparent huge pages on this machine")
def test_chunk_buffers_get_huge_pages():
    tensor = huge_page_bytes(8 * HUGE_PAGE)
    tensor.fill_(7)
    assert tensor.numel() == 8 * HUGE_PAGE and int(tensor[-1]) == 7
    start = tensor.data_ptr()
    huge_kb = 0
    with open(f"/proc/{os.getpid()}/smaps") as f:
        inside = False
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                low, high = (int(v, 16) for v in fields[0].split("-"))
                inside = low <= start < high
            elif inside and fields[0] == "AnonHugePages:":
                huge_kb = int(fields[1])
    assert huge_kb >= HUGE_PAGE // 1024, "the chunk buffer is not backed by huge pages"
