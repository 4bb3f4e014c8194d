"""The next epoch's first files, read while the current epoch drains.

An epoch's first batch waits for its order and for the files of its first chunk (a few: the ramp of
rules/order.py). Once a stream has read an epoch to its end in this process, the epoch it most likely reads next
is known: the next one for a training loop that calls set_epoch, the same one for a validation loader that never
does (the last two epochs read tell them apart; with nothing to go by, both are prepared). Its order is computed
and its first files are read in a background thread, each checked as every file read alone is (decode.py:
read_alone); the epoch's first read then takes them. A wrong guess costs those few reads. A read that fails is
left for the epoch itself to meet and report, so that a bad shard is counted once.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .prefetch import in_background
from .records import FileRecord

# (selected shard, selection ids, how to read those files) of each read that starts an epoch
FirstReads = Callable[[int], Iterable[Tuple[int, np.ndarray, Callable[[], List[FileRecord]]]]]


class NextEpoch:
    """The files prepared for the epoch guessed to come next, and what the guess goes by."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while preparing: the dataset's reads wait for it (one reader at a time)
        self.files: Dict[Tuple[int, bytes], List[FileRecord]] = {}
        self.previous: Optional[int] = None  # the epoch read to its end before the last one

    def __getstate__(self) -> Dict[str, Any]:  # a spawned worker starts with nothing prepared
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def guesses(self, epoch: int) -> List[int]:
        """The epochs to prepare, `epoch` having just been read to its end."""
        previous, self.previous = self.previous, epoch
        if previous == epoch - 1:
            return [epoch + 1]
        if previous == epoch:
            return [epoch]
        return [epoch + 1, epoch]

    def prepare(self, first_reads: FirstReads, epochs: List[int]) -> None:
        """Read the first files of `epochs` in a background thread (the lock is taken here, before this returns,
        so that no read of the dataset can slip in before the preparation)."""
        self.lock.acquire()

        def work(stop: threading.Event) -> None:
            files: Dict[Tuple[int, bytes], List[FileRecord]] = {}
            try:
                for epoch in epochs:
                    for j, ids, read in first_reads(epoch):
                        if stop.is_set():
                            return
                        try:
                            files[j, ids.tobytes()] = read()
                        except Exception:  # noqa: BLE001 - the epoch reads these files again and reports it
                            continue
                self.files = files
            except Exception:  # noqa: BLE001 - a guess that cannot be planned is no guess; the epoch plans itself
                self.files = {}
            finally:
                self.lock.release()

        try:
            in_background(work, "next-epoch")
        except BaseException:
            self.lock.release()
            raise

    def take(self, j: int, ids: np.ndarray) -> Optional[List[FileRecord]]:
        """The prepared files `ids` of selected shard j, once (call with the lock held); None: not prepared."""
        return self.files.pop((j, ids.tobytes()), None)
