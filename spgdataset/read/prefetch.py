"""Read ahead in a thread: shard I/O, tar parsing and sha256 overlap with the window gathers.

Both sides spend most of their time outside the GIL (file reads and hashlib on one side, torch copies
on the other), so on two cores reading the next shard is almost free while batches are being built.

At interpreter exit, threads still reading ahead (a loop left early) are told to stop and waited for: a
daemon thread still inside torch's C++ code when the interpreter tears down aborts the whole process
("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from typing import Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_RUNNING: "weakref.WeakKeyDictionary[threading.Thread, threading.Event]" = weakref.WeakKeyDictionary()


@atexit.register
def _stop_all(timeout: float = 5.0) -> None:
    threads = list(_RUNNING.items())
    for _, stop in threads:
        stop.set()
    for thread, _ in threads:
        thread.join(timeout)


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield from `items`, computed up to `depth` items ahead in a daemon thread; errors are re-raised here."""
    buffer: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put((_DONE, exc))

    thread = threading.Thread(target=produce, name="spgdataset-read-ahead", daemon=True)
    _RUNNING[thread] = stop
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
