"""Batch memory shared between DataLoader workers and the training process, reused only when released.

Why: a DataLoader hands each batch tensor over by creating a new shared-memory segment, faulting its pages
in, and passing a file descriptor over a socket; for a 3.9 MB batch that costs more than building it
(tools/bench.py, row (e)). Here the training process creates the segments once, before the workers start,
and a worker sends "slot i" instead of the tensor.

Safety, the part that matters: a slot goes back to its worker only when the training process holds no
reference to it (no batch, view or slice alive: the storage's use count says so). A consumer that keeps
batches does not get them overwritten; the workers then fall back to the DataLoader's own hand-off.
Slot states live in a shared int8 tensor: 0 free, 1 filled by a worker, 2 held by the training process.
Worker w only takes slots w, w + n, w + 2n, ... so no two processes ever claim the same slot.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from .memory import CAN_TELL_UNREFERENCED, tensor_nbytes, unreferenced

MARK = "__spg_ring_slot__"
NUMPY = "__spg_numpy__"
SMALL = 1 << 18  # tensors up to this many bytes travel by value


class BatchRing:
    """`slots` shared tensors of `nbytes` each; created in the training process, inherited by workers."""

    def __init__(self, slots: int, nbytes: int, num_workers: int) -> None:
        self.nbytes, self.num_workers = nbytes, num_workers
        self.storages = [torch.empty(nbytes, dtype=torch.uint8).share_memory_().untyped_storage() for _ in range(slots)]
        self.state = torch.zeros(slots, dtype=torch.int8).share_memory_()
        self.usable = CAN_TELL_UNREFERENCED

    # ------------------------------------------------------------ worker side

    def claim(self, worker: int, shape: Tuple[int, ...], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """A tensor over a free slot of this worker, or None (the caller allocates as usual)."""
        if not self.usable or tensor_nbytes(shape, dtype) != self.nbytes:
            return None
        for slot in range(worker, len(self.storages), self.num_workers):
            if int(self.state[slot]) == 0:
                self.state[slot] = 1
                return torch.empty(0, dtype=dtype).set_(self.storages[slot], 0, shape)
        return None

    def pack(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """What a worker sends: slot references for tensors in slots, numpy arrays for the small tensors.

        Small tensors (masks, labels, starts) would each cost a shared-memory segment and a file
        descriptor; as numpy arrays they travel inside the pickle.
        """
        out: Dict[str, Any] = {}
        for name, value in batch.items():
            if isinstance(value, dict):
                out[name] = self.pack(value)
            elif isinstance(value, torch.Tensor):
                slot = self._slot_of(value)
                if slot is not None:
                    out[name] = {MARK: slot, "shape": tuple(value.shape), "dtype": str(value.dtype)}
                elif value.nbytes <= SMALL and value.dtype != torch.bfloat16:
                    out[name] = {NUMPY: value.numpy()}
                else:
                    out[name] = value
            else:
                out[name] = value
        return out

    def _slot_of(self, tensor: torch.Tensor) -> Optional[int]:
        pointer = tensor.untyped_storage().data_ptr()
        for slot, storage in enumerate(self.storages):
            if storage.data_ptr() == pointer:
                return slot
        return None

    # ------------------------------------------------------------ training-process side

    def unpack(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """Undo pack(): slot references become tensors over the slots (this process's own mapping)."""
        out: Dict[str, Any] = {}
        for name, value in batch.items():
            if isinstance(value, dict) and MARK in value:
                slot = value[MARK]
                self.state[slot] = 2
                dtype = getattr(torch, value["dtype"].replace("torch.", ""))
                out[name] = torch.empty(0, dtype=dtype).set_(self.storages[slot], 0, value["shape"])
            elif isinstance(value, dict) and NUMPY in value:
                out[name] = torch.from_numpy(value[NUMPY])
            elif isinstance(value, dict):
                out[name] = self.unpack(value)
            else:
                out[name] = value
        return out

    def release_unreferenced(self) -> None:
        """Give back to the workers every slot whose batch the consumer has dropped."""
        held: List[int] = (self.state == 2).nonzero().flatten().tolist()
        for slot in held:
            if unreferenced(self.storages[slot]):
                self.state[slot] = 0
