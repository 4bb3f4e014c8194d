"""Featurising files in parallel processes, results in plan order, memory bounded."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Deque, Iterator, List, Union

import torch

from ..errors import BadInput, SpgError
from ..format.features import FeatureConfig
from .featurize import FileResult, featurize_or_report
from .plan import PlannedFile


def _one_thread() -> None:
    # One thread per process: results then do not depend on how many threads a run happens to use.
    torch.set_num_threads(1)


def _init_pool_worker(parent: int) -> None:
    """Also exit when the main process is gone (killed with SIGKILL, it cannot tell its workers)."""
    _one_thread()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _featurize_group(items: List[PlannedFile], features: FeatureConfig,
                     with_audio: bool) -> List[Union[FileResult, BadInput]]:
    return [featurize_or_report(item, features, with_audio) for item in items]


def task_groups(work: List[PlannedFile], seconds: float = 60.0) -> List[List[PlannedFile]]:
    """Consecutive files, about `seconds` of audio per task: one task per short file cost the main
    process a pool round trip per file (tools/bench.py, write side)."""
    groups: List[List[PlannedFile]] = []
    total = seconds
    for item in work:
        if total >= seconds:
            groups.append([])
            total = 0.0
        groups[-1].append(item)
        total += item.seconds
    return groups


def featurize_all(work: List[PlannedFile], features: FeatureConfig, with_audio: bool,
                  workers: int) -> Iterator[Union[FileResult, BadInput]]:
    """Results in plan order, with at most a few tasks (about a minute of audio each) in flight per
    worker (bounded memory).

    Forked processes where the platform has fork, as torch's DataLoader does (a spawned worker spends
    seconds importing torch; each worker sets one torch thread before any work); an executor rather than
    a Pool, because a Pool waits forever for the task of a worker that died, where an executor raises.
    """
    if workers == 1 or len(work) <= 1:
        threads = torch.get_num_threads()
        _one_thread()
        try:
            for item in work:
                yield featurize_or_report(item, features, with_audio)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                             initargs=(os.getpid(),)) as pool:
        in_flight: Deque[Future] = deque()
        todo = iter(task_groups(work))
        for group in itertools.islice(todo, 4 * workers):
            in_flight.append(pool.submit(_featurize_group, group, features, with_audio))
        while in_flight:
            future = in_flight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                raise SpgError("a worker process died (out of memory or killed?); finished shards are kept, "
                               "rerun the same command to resume") from None
            for group in itertools.islice(todo, 1):
                in_flight.append(pool.submit(_featurize_group, group, features, with_audio))
            yield from results
