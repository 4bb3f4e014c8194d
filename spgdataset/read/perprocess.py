"""One object per process: a forked or spawned DataLoader worker makes its own instead of using the parent's.

Why: what a forked child inherits is a copy of the parent's state at the moment of the fork, including locks that
a thread of the parent held (never released in the child) and buffers the parent may still write; a pickled copy
(spawn) has no reason to carry them at all.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Generic, Optional, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`make()` called once in each process that asks for the object (`get`)."""

    def __init__(self, make: Callable[[], T]) -> None:
        self.make = make  # picklable (a class, a functools.partial): a spawned worker gets it with the dataset
        self.pid: Optional[int] = os.getpid()
        self.value = make()

    def get(self) -> T:
        if self.pid != os.getpid():
            self.pid, self.value = os.getpid(), self.make()
        return self.value

    def __getstate__(self) -> Dict[str, Any]:  # what a spawned worker gets: the maker, not the object
        return {"make": self.make, "pid": None, "value": None}
