"""Shards skipped by on_error="warn", known in the training process even when DataLoader workers skipped them.

Why shared memory: a worker is another process, and the DataLoader carries only batches back. The log is a
few shared tensors made with the dataset (before any worker starts), so forked and spawned workers write
into the same memory the training process reads. Each process writes only its own region (0: the process
that iterates in-process, 1 + worker id: DataLoader workers), so no two processes ever write one counter.
A region keeps its first `keep` messages and counts all of them.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Tuple

import torch
from torch.utils.data import get_worker_info


class SharedErrorLog:
    """Skip messages, skipped-shard counts and filled-window counts per process, in shared memory."""

    def __init__(self, workers: int = 64, keep: int = 16, width: int = 480) -> None:
        regions = 1 + max(int(workers), 1)
        self.counts = torch.zeros(regions, 2, dtype=torch.int64).share_memory_()  # (skips, windows filled)
        self.text = torch.zeros(regions, keep, width, dtype=torch.uint8).share_memory_()
        self.lock = threading.Lock()  # threads of one process share its region

    def __getstate__(self) -> Dict[str, Any]:
        return {"counts": self.counts, "text": self.text}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def _region(self) -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % (len(self.counts) - 1)

    def skipped(self, message: str) -> None:
        """Record one skipped shard (its message is kept if the region has room)."""
        with self.lock:
            region = self._region()
            n = int(self.counts[region, 0])
            keep, width = self.text.shape[1], self.text.shape[2]
            if n < keep:
                data = message.encode("utf-8")[:width]
                self.text[region, n].zero_()
                self.text[region, n, : len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            self.counts[region, 0] = n + 1

    def filled(self, windows: int) -> None:
        """Record windows repeated to make up for skipped ones."""
        with self.lock:
            region = self._region()
            self.counts[region, 1] += int(windows)

    def totals(self) -> Tuple[int, int]:
        """(shards skipped, windows filled) over every process."""
        skips, windows = self.counts.sum(0).tolist()
        return int(skips), int(windows)

    def entries(self) -> List[Tuple[int, int, str]]:
        """(region, n, message) of every kept message, region by region."""
        out = []
        for region, n in enumerate(self.counts[:, 0].tolist()):
            for i in range(min(int(n), self.text.shape[1])):
                raw = bytes(self.text[region, i].numpy()).rstrip(b"\0")
                out.append((region, i, raw.decode("utf-8", errors="replace")))
        return out

    def messages(self) -> List[str]:
        return [text for _, _, text in self.entries()]
