"""How a stream's items leave the window pipeline: chosen by `stream()` for where it runs, followed by the
pipeline (`iter_epoch`), which never asks where it is.

In a DataLoader worker, batches are gathered straight into shared memory (the loader's ring slots, ring.py)
by one thread and handed over as slot numbers. In the training process, batch memory is reused once released,
a chunk's batches are gathered by a few threads, and items are built a few ahead in a thread while the caller
trains.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from .memory import CAN_TELL_UNREFERENCED, tensor_nbytes, unreferenced
from .prefetch import read_ahead
from .ring import BatchRing


@dataclasses.dataclass(frozen=True)
class Transport:
    """`in_worker`: items go to another process (shared memory; `ring`'s slots of worker `ring_worker`).
    `batch_threads`: threads gathering a chunk's batches. `read_ahead`: items built ahead in a thread (0: none,
    the caller's thread builds them). `shards_ahead`: the next shard read while this one is used (in a thread,
    or by the kernel, told which one comes next: `shard_thread`)."""

    in_worker: bool = False
    ring: Optional[BatchRing] = None
    ring_worker: int = 0
    batch_threads: int = 1
    read_ahead: int = 0
    shards_ahead: bool = False

    def outputs(self, batch_size: Optional[int]) -> Tuple["OutputTensors", "OutputTensors"]:
        """Where full batches go, and where partial ones go (they get concatenated: no point in reusing them)."""
        full = OutputTensors(not self.in_worker and batch_size is not None, self.in_worker, self.ring,
                             self.ring_worker)
        return full, OutputTensors(False, self.in_worker)

    def shard_thread(self, local: bool) -> bool:
        """Whether the next shard is read in a thread of its own (else, local shards are named to the kernel ahead,
        storage.will_read, and read in the thread that builds batches). Remote shards: always, their reads wait on
        the network. Local ones: only in a DataLoader worker, whose one job is batches (the thread bought 5-9% of
        rate there); in the training process it cost 10% more CPU for 2-4% of rate, on cores that training and
        other ranks need (docs/performance.md)."""
        return self.shards_ahead and (self.in_worker or not local)

    def inner(self) -> "Transport":
        """For the parts of a mixed stream (the router's datasets): no ring and no read-ahead of their own, as the
        mix is read ahead and handed over as a whole."""
        return dataclasses.replace(self, ring=None, read_ahead=0)

    def deliver(self, items: Iterator[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
        """`items` carried as this transport says: read ahead in a thread, packed into ring slots."""
        if self.read_ahead:
            items = read_ahead(one_thread(items), depth=self.read_ahead, name="batches")
        return hand_off(items, self.ring)


PLAIN = Transport()  # everything in the caller's thread, no thread started: what iter_epoch does unless told


class OutputTensors:
    """Where batch tensors are allocated.

    In a DataLoader worker: a free slot of the loader's BatchRing (ring.py), which the training process
    gives back only once it holds no reference to the batch; without one, a fresh tensor in shared memory
    (the DataLoader moves every tensor a worker returns into shared memory, which copies it; one already
    there crosses as a handle).

    In the training process: a fresh 3.9 MB tensor per batch costs about as much in page faults as the
    gather itself (tools/bench.py), so a batch's memory is reused, but only once nothing references it
    any more (no tensor, view or slice of it alive: the storage's use count says so). A consumer that
    keeps batches simply gets new memory. Reuse is never a guess.
    """

    def __init__(self, reuse: bool, shared: bool = False, ring: Optional[BatchRing] = None, ring_worker: int = 0,
                 keep: int = 12) -> None:
        self.ring, self.ring_worker = ring, ring_worker  # in a worker: its slots of the loader's shared batches
        self.shared = shared  # in a worker: allocate in shared memory (the DataLoader would copy it there)
        self.reuse = reuse and CAN_TELL_UNREFERENCED
        self.keep = keep
        self.storages: List[Any] = []
        self.lock = threading.Lock()  # batch-building threads share one pool

    def empty(self, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if not self.reuse:
            if not self.shared:
                return torch.empty(shape, dtype=dtype)
            slot = self.ring.claim(self.ring_worker, shape, dtype) if self.ring is not None else None
            return slot if slot is not None else torch.empty(shape, dtype=dtype).share_memory_()
        nbytes = tensor_nbytes(shape, dtype)
        with self.lock:
            for storage in self.storages:
                if storage.nbytes() == nbytes and unreferenced(storage):
                    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
            out = torch.empty(shape, dtype=dtype)
            if len(self.storages) < self.keep:
                self.storages.append(out.untyped_storage())
            return out


def one_thread(items: Iterator[Any]) -> Iterator[Any]:
    """Run `items` with one torch thread, in the thread that runs this generator only.

    The copies are memory-bound: intra-op threads add only synchronisation, and stall when another busy
    thread or process holds a core (tools/bench.py). torch.set_num_threads in a non-main thread sets that
    thread's OpenMP team size, leaving the training thread's untouched.
    """
    torch.set_num_threads(1)
    yield from items


def hand_off(items: Iterable[Dict[str, Any]], ring: Optional[BatchRing]) -> Iterator[Dict[str, Any]]:
    """In a DataLoader worker: what crosses to the training process (slot numbers for batches in slots)."""
    for item in items:
        yield ring.pack(item) if ring is not None else item
