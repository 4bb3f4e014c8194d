"""The writer's two kinds of task, which run wherever the executor puts them (this process, a local worker
process, a Dask worker): reading the headers of a run of files, and writing one whole shard.

A shard task computes its files' spectrograms and writes the shard and its state record itself, so only a
short record travels back: workers never send spectrograms to the main process (which was the bottleneck with
two workers), and on a cluster the bytes go from the worker straight to the output folder or bucket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, List, Tuple

import torch

from ..errors import BadInput
from ..format.features import FeatureConfig
from ..storage import Storage
from .audio import probe
from .featurize import featurize_or_report
from .plan import Header, PlannedFile
from .shards import ShardRecord, write_shard


class RoomyAllocator:
    """glibc keeps freed memory for reuse while shard tasks run, in a worker started with MALLOC_TRIM_THRESHOLD_.

    Dask starts its workers with MALLOC_TRIM_THRESHOLD_=65536, so that they hand memory back to the system.
    Setting it also pins glibc's mmap threshold at 128 KiB, so each of a clip's ~1 MB buffers was mapped and
    unmapped anew: 300 page faults a file and 2.3x the time (tools/bench_write.py). While any shard task runs,
    the mmap and trim thresholds are raised (MMAP_BYTES, TRIM_BYTES); when the last one ends they are put back
    and the heap trimmed, as the worker was configured. Elsewhere (no such variable, not glibc) nothing changes.
    """

    MMAP_BYTES, TRIM_BYTES, GLIBC_MMAP_DEFAULT = 32 * 2**20, 64 * 2**20, 128 * 2**10
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)

    def __init__(self) -> None:
        self.lock, self.running = threading.Lock(), 0
        self.libc: Any = None
        configured = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
        self.configured = int(configured) if configured.isdigit() else None
        if self.configured is not None:
            libc = ctypes.CDLL(None)
            self.libc = libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None

    def __enter__(self) -> None:
        with self.lock:
            self.running += 1
            if self.libc is not None and self.running == 1:
                self.libc.mallopt(self.M_MMAP_THRESHOLD, self.MMAP_BYTES)
                self.libc.mallopt(self.M_TRIM_THRESHOLD, self.TRIM_BYTES)

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.running -= 1
            if self.libc is not None and self.running == 0:
                self.libc.mallopt(self.M_TRIM_THRESHOLD, self.configured)
                self.libc.mallopt(self.M_MMAP_THRESHOLD, self.GLIBC_MMAP_DEFAULT)
                self.libc.malloc_trim(0)


_ALLOCATOR = RoomyAllocator()


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One torch thread while a task runs: results then do not depend on how many threads a machine has, and
    tasks side by side do not fight over cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shard_task(out: Storage, k: int, files: List[PlannedFile], features: FeatureConfig, with_audio: bool,
               dry_run: bool) -> ShardRecord:
    """Shard k: its files featurised one after the other and written as they come; its record. `out` is the
    run's storage, pickled with the S3 settings of the process that started the run."""
    with one_torch_thread(), _ALLOCATOR:
        results = (featurize_or_report(item, features, with_audio) for item in files)
        return write_shard(out, k, results, dry_run)


def header_task(files: List[Tuple[str, str]]) -> List[Header]:
    """Headers of (absolute path, name) pairs. Cached local headers take ~30 µs each and threads only fight
    over the GIL; headers that wait on storage (over 1 ms each in the first 16) are read by 8 threads."""
    started = time.perf_counter()
    first = [_header(f) for f in files[:16]]
    if time.perf_counter() - started < 1e-3 * len(first):
        return first + [_header(f) for f in files[16:]]
    with ThreadPoolExecutor(8) as pool:
        return first + list(pool.map(_header, files[16:]))


def _header(file: Tuple[str, str]) -> Header:
    try:
        return probe(*file)
    except BadInput as bad:
        return bad.problem
