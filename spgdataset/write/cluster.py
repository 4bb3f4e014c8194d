"""Writing on a Dask cluster (`pip install "spgdataset[dask]"`): the writer's jobs as Dask tasks.

What the cluster must offer: workers that can import this version of spgdataset and see AUDIO_ROOT and
OUTPUT_DIR at the same paths (a shared file system; or s3:// for the output). Both are checked on every
worker before the first task, so a wrong setup is one clear message, not a thousand failed tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import SpgError
from ..storage import is_s3_url
from ..version import __version__
from .executors import Job

RETRIES = 2  # a task that raises (a flaky disk or bucket) runs up to this many more times
HANDSHAKE_SECONDS = 5.0  # a Dask scheduler greets a new connection at once
MAX_HANDSHAKE_BYTES = 1 << 20  # its greeting is a small message


def worker_view(paths: List[str]) -> Tuple[str, List[bool]]:
    """Run on each worker: its spgdataset version, and which of `paths` it can see."""
    return __version__, [is_s3_url(p) or os.path.exists(p) for p in paths]


class DaskExecutor:
    """executors.py's interface on a `dask.distributed.Client`.

    Each job is one task, keyed by what it does and a run token (`spg-shard-000012-1f2e3d4c`,
    `spg-headers-000003-1f2e3d4c`), so the dashboard's task stream and progress bars read "spg-shard" and
    "spg-headers". A task that raises is retried (RETRIES); one whose worker dies is run again elsewhere by
    Dask, up to its `allowed-failures`. Writing a shard is atomic and deterministic, so a rerun of a task
    gives the same bytes.
    """

    def __init__(self, client: Any, paths: List[str]) -> None:
        self.client, self.paths = client, paths
        self.token = uuid.uuid4().hex[:8]
        self.checked = False

    def run(self, fn: Callable[..., Any], jobs: List[Job]) -> Iterator[Tuple[int, Any]]:
        from distributed import KilledWorker, as_completed

        if not jobs:
            return
        self._check_workers()
        futures = [self.client.submit(fn, *args, key=f"{name}-{self.token}", retries=RETRIES, pure=False)
                   for name, args in jobs]
        numbers = {future.key: number for number, future in enumerate(futures)}
        try:
            for future in as_completed(futures):
                yield numbers[future.key], future.result()
        except KilledWorker as exc:
            raise SpgError(f"Dask workers died running {exc.task} (out of memory? killed?) as often as the scheduler "
                           "allows; finished shards are kept, rerun the same command to resume") from None
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def _check_workers(self) -> None:
        """Once, on the workers there are (a cluster still scaling up is checked on those it has)."""
        if self.checked:
            return
        self.checked = True
        try:
            views = self.client.run(worker_view, self.paths)
        except Exception as exc:
            raise SpgError(f"Dask workers cannot run spgdataset ({type(exc).__name__}: {exc}); install "
                           f"spgdataset {__version__} on them") from None
        for worker, (version, visible) in sorted(views.items()):
            if version != __version__:
                raise SpgError(f"Dask worker {worker} has spgdataset {version}, this process {__version__}: "
                               "install the same version everywhere (the output must not depend on the worker)")
            missing = [p for p, seen in zip(self.paths, visible) if not seen]
            if missing:
                raise SpgError(f"Dask worker {worker} cannot see {missing[0]}: the workers need the audio and "
                               "the output folder at the same paths (a shared file system, or s3://)")

    def close(self) -> None:
        pass


@contextlib.contextmanager
def dask_client(scheduler: str) -> Iterator[Any]:
    """A Client for `--scheduler`: "local:N" starts a LocalCluster of N one-thread worker processes on this
    machine; anything else is the address of a running scheduler (tcp://HOST:8786)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SpgError('--scheduler needs Dask: pip install "spgdataset[dask]"') from None
    cluster: Optional[Any] = None
    if scheduler.startswith("local:"):
        count = scheduler[len("local:"):]
        if not count.isdigit() or int(count) < 1:
            raise SpgError(f"--scheduler {scheduler}: expected local:N with N >= 1 worker processes")
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True, host="127.0.0.1",
                               silence_logs=logging.ERROR)
        target: Any = cluster
    else:
        target = scheduler
        _check_speaks_dask(scheduler)
    try:
        client = Client(target, timeout="20s")
    except Exception as exc:  # OSError, TimeoutError, or what a confused handshake raises
        raise SpgError(f"cannot reach the Dask scheduler at {scheduler}: {type(exc).__name__}: {exc}") from None
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_speaks_dask(scheduler: str, timeout: float = HANDSHAKE_SECONDS) -> None:
    """A plain TCP address must answer as Dask does before a Client is made: a Dask server sends its handshake
    (an 8-byte frame length, then frames of a small msgpack message) as soon as it accepts a connection. Without
    this, an HTTP server (the dashboard's port, a proxy) let the Client wait for minutes, and a server answering
    garbage made it try to allocate exabytes for a "frame"."""
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if scheme != "tcp":
        return  # tls:// and others: the Client's own timeout applies
    host, port = parse_host_port(location)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            head = _received(sock, 16)
    except socket.timeout:
        raise SpgError(f"--scheduler {scheduler}: the server there says nothing within {timeout:g} s, where a Dask "
                       "scheduler greets at once (an HTTP server? the dashboard's port, not the "
                       "scheduler's?)") from None
    except OSError as exc:
        raise SpgError(f"cannot reach the Dask scheduler at {scheduler}: {exc.strerror or exc}") from None
    total, frames = struct.unpack("<QQ", head) if len(head) == 16 else (0, 0)
    if not (16 <= total <= MAX_HANDSHAKE_BYTES and 1 <= frames <= 64):
        raise SpgError(f"--scheduler {scheduler}: the server there does not answer as a Dask scheduler "
                       f"(its first bytes: {head.hex() or 'none'})")


def _received(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def describe_client(client: Any) -> str:
    """One line for the terminal: where the work goes and where to watch it."""
    workers: Dict[str, Any] = client.scheduler_info().get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    link = getattr(client, "dashboard_link", None)
    return (f"spg-shard: Dask scheduler {client.scheduler.address}, {len(workers)} workers ({threads} threads)"
            + (f"; dashboard {link}" if link else ""))
