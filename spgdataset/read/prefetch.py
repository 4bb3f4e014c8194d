"""Read ahead in a thread: shard I/O, tar parsing and sha256 overlap with the window gathers.

Both sides spend most of their time outside the GIL (file reads and hashlib on one side, torch copies
on the other), so on two cores reading the next shard is almost free while batches are being built.

Handing an item over wakes the other thread, which costs about 50 us a time here (a context switch and the
GIL passed back and forth): a batch costs 0.7 ms to gather, so waking the training thread for each one cost 7%
of a core. Each side therefore wakes the other once per half buffer: the producer, resumed only when the
buffer has drained to half, fills it again in one go; the training thread, once it has emptied the buffer,
sleeps until half of it is full again. The first item is handed over at once (the first batch is not held
back), and neither side ever waits for the other while it could work, so the rate is unchanged.

At interpreter exit, threads still reading ahead (a loop left early) are told to stop and waited for: a
daemon thread still inside torch's C++ code when the interpreter tears down aborts the whole process
("terminate called without an active exception").
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections import deque
from typing import Any, Callable, Deque, Iterator, Optional, TypeVar

T = TypeVar("T")
_RUNNING: "weakref.WeakKeyDictionary[threading.Thread, threading.Event]" = weakref.WeakKeyDictionary()


@atexit.register
def _stop_all(timeout: float = 5.0) -> None:
    threads = list(_RUNNING.items())
    for _, stop in threads:
        stop.set()
    for thread, _ in threads:
        thread.join(timeout)


class _Buffer:
    """At most `depth` items between one producer and one consumer, each side woken once per `wake_at` items."""

    def __init__(self, depth: int, stop: threading.Event) -> None:
        self.items: Deque[Any] = deque()
        self.depth, self.wake_at = depth, max(1, depth // 2)
        self.changed = threading.Condition()
        self.stop = stop
        self.finished = False
        self.error: Optional[BaseException] = None
        self.consumer_waits = self.producer_waits = False
        self.handed = 0  # items handed over so far

    def put(self, item: Any) -> bool:
        """Add `item`, after waiting while the buffer is full; False once the consumer has stopped."""
        with self.changed:
            while len(self.items) >= self.depth and not self.stop.is_set():
                self.producer_waits = True
                self.changed.wait(0.1)  # a timeout: `stop` is set without the lock at interpreter exit
            self.producer_waits = False
            if self.stop.is_set():
                return False
            self.items.append(item)
            self.handed += 1
            if self.consumer_waits and (len(self.items) >= self.wake_at or self.handed == 1):
                self.changed.notify()
            return True

    def finish(self, error: Optional[BaseException] = None) -> None:
        with self.changed:
            self.finished, self.error = True, error
            self.changed.notify()

    def get(self) -> Any:
        """The next item; raises StopIteration at the end, or the producer's error."""
        with self.changed:
            while not self.items and not self.finished:
                self.consumer_waits = True
                self.changed.wait()
            self.consumer_waits = False
            if self.items:
                item = self.items.popleft()
                if self.producer_waits and len(self.items) <= self.depth - self.wake_at:
                    self.changed.notify()
                return item
        if self.error is not None:
            raise self.error
        raise StopIteration


def read_ahead(items: Iterator[T], depth: int = 1, name: str = "read-ahead") -> Iterator[T]:
    """Yield from `items`, computed up to `depth` items ahead in a daemon thread (named spgdataset-`name`, as
    profilers show it); errors are re-raised here."""
    stop = threading.Event()
    buffer = _Buffer(depth, stop)

    def produce(_: threading.Event) -> None:  # (it stops through `buffer`, which holds `stop`)
        try:
            for item in items:
                if not buffer.put(item):
                    return
            buffer.finish()
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            buffer.finish(exc)

    in_background(produce, name, stop)
    try:
        while True:
            try:
                item = buffer.get()
            except StopIteration:
                return
            yield item
    finally:
        stop.set()
        with buffer.changed:
            buffer.changed.notify()


def in_background(work: Callable[[threading.Event], None], name: str,
                  stop: Optional[threading.Event] = None) -> threading.Thread:
    """Run `work(stop)` in a daemon thread named spgdataset-`name` (as profilers show it), which is told to stop
    (`stop` set; a new event unless given) and waited for at interpreter exit."""
    stop = stop or threading.Event()
    thread = threading.Thread(target=work, args=(stop,), name=f"spgdataset-{name}", daemon=True)
    _RUNNING[thread] = stop
    thread.start()
    return thread
