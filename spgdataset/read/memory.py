"""Memory for chunks: reused once nothing references it, in huge pages where they cost no wait.

Why (tools/bench.py, row "chunks in fresh 4 KB pages"): a chunk is one (n_mels, frames) tensor of 30-40 MB
that every batch of the chunk gathers from at random, and a fresh tensor per chunk pays a page fault per 4 KB;
reusing a released buffer removes the faults altogether. Transparent huge pages (2 MB) make the gather about 5%
faster (fewer TLB misses: with 4 KB pages each of a window's 80 rows is on its own page), but they are asked for
(madvise) only where the kernel then never stalls for them: under its default policy (`defrag` "madvise") a
huge-page fault on a machine whose free memory is fragmented compacts memory first, and touching a fresh 35 MB
buffer took 110 ms at the median and up to 350 ms, against 14 ms in 4 KB pages (a fresh process's first epoch
ran at 29k windows/s instead of 70k).

Reuse is never a guess: a buffer is handed out again only when its storage's use count shows that no
tensor or view of it is alive. `unreferenced` is that rule, also for batching.OutputTensors and ring.BatchRing.
"""

from __future__ import annotations

import functools
import mmap
import threading
from typing import Any, List, Optional, Tuple

import torch

HUGE_PAGE = 2 << 20
THP_DEFRAG = "/sys/kernel/mm/transparent_hugepage/defrag"
CAN_TELL_UNREFERENCED = hasattr(torch._C, "_storage_Use_Count")  # without it, memory is never reused


def unreferenced(storage: Any) -> bool:
    """True when the caller's reference is the only one to `storage` (an untyped storage): no tensor, view
    or slice of it is alive anywhere in this process, so its memory can be written again."""
    return torch._C._storage_Use_Count(storage._cdata) == 1


def tensor_nbytes(shape: Tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a tensor of `shape` and `dtype`, without making one."""
    count = 1
    for n in shape:
        count *= n
    return count * torch.empty((), dtype=dtype).element_size()


def stall_free_huge_pages(defrag: str) -> bool:
    """Whether asking for huge pages costs no wait under the kernel's THP `defrag` setting (the text of
    THP_DEFRAG, the selected mode in brackets): only "defer" and "never" fall back to 4 KB pages at once when no
    huge page is free; "always", "madvise" (the kernel's default) and "defer+madvise" compact memory first."""
    selected = defrag[defrag.find("[") + 1 : defrag.find("]")] if "[" in defrag else defrag.strip()
    return selected in ("defer", "never")


@functools.lru_cache(maxsize=1)
def advise_huge_pages() -> bool:
    """This machine's answer to stall_free_huge_pages (False where the setting cannot be read)."""
    try:
        with open(THP_DEFRAG) as f:
            return stall_free_huge_pages(f.read())
    except OSError:
        return False


def huge_page_bytes(nbytes: int, advise: Optional[bool] = None) -> torch.Tensor:
    """A uint8 tensor of at least `nbytes` (whole huge pages), a private anonymous mapping advised to use
    transparent huge pages when `advise` (None: where that never stalls, advise_huge_pages).

    Falls back to torch.empty where there is no MAP_PRIVATE/MADV_HUGEPAGE (not Linux) or mmap fails.
    """
    size = -(-max(nbytes, 1) // HUGE_PAGE) * HUGE_PAGE
    private, anonymous = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if private is None or anonymous is None or advice is None:
        return torch.empty(size, dtype=torch.uint8)
    try:
        region = mmap.mmap(-1, size, flags=private | anonymous)
        if advise_huge_pages() if advise is None else advise:
            region.madvise(advice)
    except (OSError, ValueError):
        return torch.empty(size, dtype=torch.uint8)
    return torch.frombuffer(region, dtype=torch.uint8)  # the tensor keeps the mapping alive


class ChunkMemory:
    """Up to `keep` huge-page buffers, each lent out again once its last tensor is gone.

    Buffers are rounded up to whole huge pages with 25% headroom, so chunks of slightly different sizes
    share them. Thread-safe: the chunk builder and a resumed iterator may ask at the same time.
    """

    def __init__(self, keep: int = 3) -> None:
        self._start(keep)

    def _start(self, keep: int) -> None:
        self.keep = keep
        self.buffers: List[Any] = []  # untyped storages: holding one counts once in its use count
        self.lock = threading.Lock()
        self.reusable = CAN_TELL_UNREFERENCED

    def __getstate__(self) -> dict:  # a pickled pool (spawned DataLoader worker) starts empty
        return {"keep": self.keep}

    def __setstate__(self, state: dict) -> None:
        self._start(state["keep"])

    def empty(self, shape: Any, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape`, `dtype` (contiguous)."""
        shape = tuple(int(n) for n in shape)
        nbytes = tensor_nbytes(shape, dtype)
        with self.lock:
            buffer = self._free(nbytes) if self.reusable else None
            if buffer is None:
                buffer = huge_page_bytes(nbytes + nbytes // 4).untyped_storage()
                self._remember(buffer)
        return torch.empty(0, dtype=dtype).set_(buffer, 0, shape)

    def _free(self, nbytes: int) -> Any:
        """The smallest released buffer that fits, or None."""
        fits = [b for b in self.buffers if b.nbytes() >= nbytes and unreferenced(b)]
        return min(fits, key=lambda b: b.nbytes()) if fits else None

    def _remember(self, buffer: Any) -> None:
        if len(self.buffers) >= self.keep:  # forget a released buffer (it is freed), or keep none more
            released = [b for b in self.buffers if unreferenced(b)]
            if not released:
                return
            self.buffers.remove(min(released, key=lambda b: b.nbytes()))
        self.buffers.append(buffer)
