"""Sliding windows out of decoded files, batched with one gather per output.

Files come in chunks, each with the order of its windows (rules/order.py, stages.py); each batch is one gather
on a chunk (chunks.py), into memory the transport chooses (transport.py). A batch that a chunk's end cuts short
is completed from the next chunk.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Generator, Iterator, List, Optional, Tuple

import torch

from .batches import batch_size_of, concat_batches, split_batch
from .chunks import Chunk, built_chunks
from .memory import ChunkMemory
from .options import Batching
from .prefetch import read_ahead
from .records import WindowSpec
from .stages import ChunkInput
from .transport import PLAIN, Transport, one_thread


FIRST_CHUNK_BATCHES = 4  # the first chunk's windows, in batches: the ramp of rules/order.chunk_bounds


def first_chunk_windows(batch_size: Optional[int]) -> int:
    """Windows of an epoch's first chunk (the ramp's start): what the order uses and chunk_plan records."""
    return FIRST_CHUNK_BATCHES * (batch_size or 256)


def chunk_plan(batching: Batching) -> List[int]:
    """[windows of a full chunk, of the first]: with the file order, what groups an epoch's windows into chunks
    (a saved state must agree: another grouping is another order)."""
    return [batching.shuffle_buffer, first_chunk_windows(batching.batch_size)]


def iterate_windows(
    inputs: Iterator[ChunkInput],
    spec: WindowSpec,
    batch_size: Optional[int],
    drop_last: bool = False,
    transport: Transport = PLAIN,
    memory: Optional[ChunkMemory] = None,
) -> Generator[Dict[str, Any], None, None]:
    """The windows of `inputs`, chunk after chunk in each one's order, as batches of `batch_size` (or single
    windows when None).

    `transport` (transport.py): where batch tensors go, and how many threads build a chunk's batches at once
    (in order; torch copies release the GIL). Independent single-threaded copies, unlike intra-op threads, do
    not stall each other when another process holds a core.
    `memory`: where chunks live (memory.py); pass one that outlives the call to reuse it across epochs.
    """
    size = batch_size or 256
    carry: Optional[Dict[str, Any]] = None
    outputs, fresh = transport.outputs(batch_size)
    threads = transport.batch_threads
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) if threads > 1 else None
    chunks: Iterator[Chunk] = built_chunks(inputs, spec, memory or ChunkMemory())
    if pool is not None:  # the next chunk is built while the pool gathers the batches of this one
        chunks = read_ahead(one_thread(chunks), depth=1, name="chunks")
    try:
        for chunk in chunks:
            ranges, pos = [], 0
            if carry is not None:
                ranges.append((pos, min(pos + size - batch_size_of(carry), chunk.count)))
                pos = ranges[-1][1]
            ranges += [(lo, min(lo + size, chunk.count)) for lo in range(pos, chunk.count, size)]

            def take(bounds: Tuple[int, int], chunk: Chunk = chunk) -> Dict[str, Any]:
                lo, hi = bounds
                return chunk.take(lo, hi, outputs if hi - lo == size else fresh)

            for batch in _in_order(take, ranges, pool, depth=2 * threads):
                if carry is not None:
                    batch, carry = concat_batches([carry, batch]), None
                if batch_size_of(batch) < size:
                    carry = batch
                else:
                    yield from _emit(batch, batch_size)
        if carry is not None and (batch_size is None or not drop_last):
            yield from _emit(carry, batch_size)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _in_order(fn: Any, args: List[Any], pool: Optional[ThreadPoolExecutor], depth: int) -> Iterator[Any]:
    """map(fn, args) on `pool` with at most `depth` results in flight, yielded in order."""
    if pool is None:
        for arg in args:
            yield fn(arg)
        return
    pending: Deque[Future] = deque()
    for arg in args:
        pending.append(pool.submit(fn, arg))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _emit(batch: Dict[str, Any], batch_size: Optional[int]) -> Iterator[Dict[str, Any]]:
    if batch_size is None:
        yield from split_batch(batch)
    else:
        yield batch
