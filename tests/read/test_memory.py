"""Chunk memory (spgdataset/memory.py): lent again only when released, in huge pages where they cost no wait."""

from __future__ import annotations

import os

import pytest
import torch

from spgdataset.read.memory import HUGE_PAGE, ChunkMemory, huge_page_bytes, stall_free_huge_pages


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


def _thp_enabled() -> str:
    """The selected mode of transparent huge pages ("always", "madvise", "never"), "" where unknown."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.find("[") + 1 : text.find("]")]


def _huge_kb(tensor: torch.Tensor) -> int:
    """AnonHugePages of the mapping that holds `tensor` (/proc/self/smaps)."""
    start, huge_kb, inside = tensor.data_ptr(), 0, False
    with open(f"/proc/{os.getpid()}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                low, high = (int(v, 16) for v in fields[0].split("-"))
                inside = low <= start < high
            elif inside and fields[0] == "AnonHugePages:":
                huge_kb = int(fields[1])
    return huge_kb


@pytest.mark.skipif(_thp_enabled() not in ("always", "madvise"), reason="no transparent huge pages on this machine")
def test_chunk_buffers_asked_to_use_huge_pages_get_them():
    tensor = huge_page_bytes(8 * HUGE_PAGE, advise=True)
    tensor.fill_(7)
    assert tensor.numel() == 8 * HUGE_PAGE and int(tensor[-1]) == 7
    assert _huge_kb(tensor) >= HUGE_PAGE // 1024, "the chunk buffer is not backed by huge pages"


@pytest.mark.skipif(_thp_enabled() != "madvise", reason="huge pages are given here without being asked for")
def test_chunk_buffers_not_asked_to_use_huge_pages_stay_in_small_ones():
    tensor = huge_page_bytes(8 * HUGE_PAGE, advise=False)
    tensor.fill_(7)
    assert int(tensor[-1]) == 7 and _huge_kb(tensor) == 0


@pytest.mark.parametrize("defrag, stall_free", [
    ("always defer defer+madvise [madvise] never", False),  # the kernel's default: compacts for an madvised fault
    ("[always] defer defer+madvise madvise never", False),
    ("always defer [defer+madvise] madvise never", False),
    ("always [defer] defer+madvise madvise never", True),
    ("always defer defer+madvise madvise [never]", True),
    ("madvise", False),
    ("", False),
])
def test_huge_pages_are_asked_for_only_where_the_kernel_never_stalls_for_them(defrag, stall_free):
    assert stall_free_huge_pages(defrag) is stall_free


# ---------------------------------------------------------------- whole shards' bytes (decode.read_reusing)


def test_a_later_epoch_maps_no_new_memory_for_shards_or_chunks(run16k, monkeypatch):
    """A shard's bytes go into a buffer that no file of an earlier shard still uses; once the first epoch has
    made them, the buffers serve every later epoch (a fresh 7 MB bytes object per shard cost 10,000 page faults
    an epoch)."""
    from spgdataset import SpectrogramDataset
    from spgdataset.read import memory

    mapped: list = []
    make = memory.huge_page_bytes
    monkeypatch.setattr(memory, "huge_page_bytes", lambda nbytes, advise=None: (mapped.append(nbytes),
                                                                                make(nbytes, advise))[1])
    asked: list = []  # (shape, dtype) of each buffer asked of a pool: whole shards are 1-D uint8
    lend = memory.ChunkMemory.empty
    monkeypatch.setattr(memory.ChunkMemory, "empty", lambda pool, shape, dtype: (asked.append((len(shape), dtype)),
                                                                                 lend(pool, shape, dtype))[1])
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, batch_size=4, seed=1, shuffle_buffer=16)
    first = [tuple(b["key"]) for b in ds]
    made = len(mapped)
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        assert sum(1 for _ in ds) == len(first)
    assert asked.count((1, torch.uint8)) >= 2 * len(ds.shards.shards)  # shards read whole into pool buffers
    assert len(mapped) == made, "a later epoch mapped new memory"


def test_a_shard_buffer_is_never_written_while_a_file_of_it_is_alive(run16k):
    """Files are views of their shard's bytes: reading more shards than the pool keeps, several times over,
    leaves a file kept from the first read as it was."""
    from spgdataset import SpectrogramDataset

    ds = SpectrogramDataset(run16k[0], window_content_ratio=0)
    reader, shards = ds.reader, ds.shards.manifest.shards
    assert len(shards) >= 3
    positions = [list(range(int(reader.bounds[k]), int(reader.bounds[k + 1]))) for k in range(len(shards))]
    kept = reader.read(0, positions[0])
    copies = [record.spec.copy() for record in kept]
    assert not kept[0].spec.flags.writeable
    for _ in range(4):
        for k in range(len(shards) - 1, -1, -1):  # shard 0 too: its bytes read again into another buffer
            reader.last_shard = None
            assert len(reader.read(k, positions[k])) == len(positions[k])
    assert all((record.spec == copy).all() for record, copy in zip(kept, copies))
