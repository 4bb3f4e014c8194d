"""Reading ahead in a thread (spgdataset/read/prefetch.py): items in order, errors where they happened, at most
`depth` items ahead, the first item at once, each side woken once per half buffer, and a loop left early
stops the thread."""

from __future__ import annotations

import threading
import time
from typing import Iterator, List

import pytest

from spgdataset.read.prefetch import read_ahead


def test_items_come_in_order_and_an_error_after_the_items_before_it():
    def items() -> Iterator[int]:
        yield from range(10)
        raise ValueError("shard 10 is corrupt")

    got: List[int] = []
    with pytest.raises(ValueError, match="shard 10 is corrupt"):
        for item in read_ahead(items(), depth=4):
            got.append(item)
    assert got == list(range(10))
    assert list(read_ahead(iter(range(1000)), depth=3)) == list(range(1000))


def test_the_first_item_is_handed_over_at_once():
    def items() -> Iterator[int]:
        yield 0
        time.sleep(1.0)
        yield 1

    started = time.monotonic()
    ahead = read_ahead(items(), depth=4)
    assert next(ahead) == 0 and time.monotonic() - started < 0.5  # not held back until half the buffer is full
    assert list(ahead) == [1]


def test_the_producer_is_at_most_depth_items_ahead_and_resumed_once_per_half_buffer():
    produced: List[float] = []

    def items() -> Iterator[int]:
        for i in range(24):
            produced.append(time.monotonic())
            yield i

    ahead = read_ahead(items(), depth=4)
    for consumed, item in enumerate(ahead, 1):
        assert len(produced) - consumed <= 4 + 1  # the buffer, and the one in the producer's hands
        time.sleep(0.03)  # a training step: the producer waits on a full buffer
    resumes = sum(1 for a, b in zip(produced, produced[1:]) if b - a > 0.015)
    assert resumes <= 13, f"the producer was woken {resumes} times for 24 items (once per item: about 20)"


def test_a_loop_left_early_stops_the_thread():
    produced: List[int] = []

    def items() -> Iterator[int]:
        for i in range(10**6):
            produced.append(i)
            yield i

    ahead = read_ahead(items(), depth=2, name="test-early")
    for item in ahead:
        if item == 5:
            break
    ahead.close()
    deadline = time.monotonic() + 2
    while any(t.name == "spgdataset-test-early" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "spgdataset-test-early" for t in threading.enumerate())
    assert len(produced) <= 6 + 2 + 1
