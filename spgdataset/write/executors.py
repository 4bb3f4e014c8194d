"""Where the writer's tasks run: in this process, or in a pool of local worker processes (write/cluster.py:
on a Dask cluster). One interface: `run(fn, jobs)` yields (job number, result) as jobs finish, and stops
what has not started when the caller stops or a job fails.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import SpgError

Job = Tuple[str, Sequence[Any]]  # (a name a person can read, the function's arguments)


class InProcess:
    """Jobs one after the other in this process (workers=1)."""

    workers = 1

    def run(self, fn: Callable[..., Any], jobs: List[Job]) -> Iterator[Tuple[int, Any]]:
        for number, (_, args) in enumerate(jobs):
            yield number, fn(*args)

    def close(self) -> None:
        pass


def _init_worker(parent: int) -> None:
    """One torch thread per process; the cyclic GC on (the main process may fork with it paused) but not over
    what the fork inherited; exit when the main process is gone (killed with SIGKILL, it cannot tell its
    workers)."""
    torch.set_num_threads(1)
    gc.freeze()
    gc.enable()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class ProcessPool:
    """Jobs in `workers` local processes, at most two per worker queued at a time.

    Forked where the platform has fork, as torch's DataLoader does (a spawned worker spends seconds importing
    torch); an executor rather than a Pool, because a Pool waits forever for the job of a worker that died,
    where an executor raises. The pool starts at the first run and serves every run until close().
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: Optional[ProcessPoolExecutor] = None

    def run(self, fn: Callable[..., Any], jobs: List[Job]) -> Iterator[Tuple[int, Any]]:
        pool = self._pool()
        todo = iter(enumerate(jobs))
        in_flight: Dict[Future, int] = {}
        try:
            while True:
                for number, (_, args) in todo:
                    in_flight[pool.submit(fn, *args)] = number
                    if len(in_flight) >= 2 * self.workers:
                        break
                if not in_flight:
                    return
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield in_flight.pop(future), future.result()
        except BrokenProcessPool:
            raise SpgError("a worker process died (out of memory or killed?); finished shards are kept, "
                           "rerun the same command to resume") from None
        finally:
            for future in in_flight:
                future.cancel()

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                            initializer=_init_worker, initargs=(os.getpid(),))
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def local_executor(workers: int) -> Any:
    return InProcess() if workers <= 1 else ProcessPool(workers)
