"""Reading every input's header to plan the run: in parallel, and once.

A million headers take minutes, so they are read by the run's workers in runs of HEADER_JOB files, and what
they said is kept in OUTPUT_DIR/.spg-state/headers.msgpack with each file's size and modification time. A
rerun (a resume, another part of a split run, a finished run started again) reads only the headers of files
that are new or changed since, as make and rsync decide what changed.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple, cast

import numpy as np

from ..format.codec import pack, unpack
from ..format.names import STATE_DIR
from ..storage import Storage
from .audio import AudioHeader
from .inputs import FileEntry
from .plan import Header
from .progress import Progress
from .tasks import header_task

HEADERS_NAME = f"{STATE_DIR}/headers.msgpack"
HEADERS_VERSION = 2  # 2: the samples a header declares beyond those present (an older cache is read again)
HEADER_JOB = 1000  # files per job
SHOW_PROGRESS_FROM = 20000  # headers to read before a progress line is worth showing
Stat = Optional[Tuple[int, int]]  # (size, mtime in ns); None: the file is not there


class HeaderCache:
    """What earlier runs read in headers: {path: (size, mtime_ns, header)}."""

    def __init__(self, known: Optional[Dict[str, Tuple[int, int, Header]]] = None) -> None:
        self.known = known or {}

    @classmethod
    def load(cls, out: Storage) -> "HeaderCache":
        """The saved headers; an empty cache when there are none or they do not read (they are only a
        shortcut: a damaged file costs a re-read, never a wrong plan)."""
        try:
            data = out.read(HEADERS_NAME)
            return cls(_decode(unpack(data))) if data is not None else cls()
        except Exception:  # unreadable (a dry run into a missing bucket), or not a cache
            return cls()

    def lookup(self, path: str, stat: Stat) -> Optional[Header]:
        found = self.known.get(path)
        return found[2] if found is not None and stat is not None and found[:2] == stat else None

    def save(self, out: Storage, entries: List[FileEntry], stats: List[Stat], headers: List[Header]) -> None:
        rows = [(e.path, s, h) for e, s, h in zip(entries, stats, headers) if s is not None]
        out.write(HEADERS_NAME, pack(_encode(rows)))


def _encode(rows: List[Tuple[str, Tuple[int, int], Header]]) -> Dict[str, Any]:
    """Columns: a million rows as seven values, not a million small lists."""
    def column(values: List[int]) -> bytes:
        return np.asarray(values, dtype="<i8").tobytes()

    return {"version": HEADERS_VERSION, "paths": [path for path, _, _ in rows],
            "size": column([s[0] for _, s, _ in rows]), "mtime": column([s[1] for _, s, _ in rows]),
            "samples": column([h[0] if isinstance(h, tuple) else -1 for _, _, h in rows]),
            "rate": column([h[1] if isinstance(h, tuple) else -1 for _, _, h in rows]),
            "declared": column([_declared(h) for _, _, h in rows]),
            "problems": {str(i): h for i, (_, _, h) in enumerate(rows) if isinstance(h, str)}}


def _declared(header: Header) -> int:
    declared = getattr(header, "declared", None)
    return -1 if declared is None else declared


def _decode(data: Any) -> Dict[str, Tuple[int, int, Header]]:
    if not isinstance(data, dict) or data.get("version") != HEADERS_VERSION:
        raise ValueError("not a header cache")
    paths, problems = data["paths"], data["problems"]
    names = ("size", "mtime", "samples", "rate", "declared")
    columns = [np.frombuffer(data[name], dtype="<i8").tolist() for name in names]
    if not isinstance(paths, list) or not isinstance(problems, dict) or any(len(c) != len(paths) for c in columns):
        raise ValueError("columns of different lengths")
    known: Dict[str, Tuple[int, int, Header]] = {}
    for i, (path, size, mtime, samples, rate, declared) in enumerate(zip(paths, *columns)):
        header: Header = (AudioHeader(samples, rate, declared if declared >= 0 else None) if samples >= 0 and rate > 0
                          else str(problems.get(str(i), "unreadable")))
        known[str(path)] = (size, mtime, header)
    return known


def stat_of(path: str) -> Stat:
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return None
    return found.st_size, found.st_mtime_ns


def read_headers(entries: List[FileEntry], executor: Any, cache: HeaderCache,
                 progress: bool) -> Tuple[List[Header], List[Stat], int]:
    """Every entry's header (from the cache when the file is unchanged), the files' stats, and how many
    headers were read from the files."""
    stats = [stat_of(e.abspath) for e in entries]
    headers: List[Optional[Header]] = [cache.lookup(e.path, s) for e, s in zip(entries, stats)]
    todo = [i for i, h in enumerate(headers) if h is None]
    jobs = [(f"spg-headers-{j // HEADER_JOB:06d}", ([(entries[i].abspath, entries[i].path)
                                                    for i in todo[j : j + HEADER_JOB]],))
            for j in range(0, len(todo), HEADER_JOB)]
    reporter = Progress(len(todo), 0.0, label="spg-shard: headers",
                        enabled=progress and len(todo) >= SHOW_PROGRESS_FROM)
    for number, found in executor.run(header_task, jobs):
        start = number * HEADER_JOB
        for i, header in zip(todo[start : start + HEADER_JOB], found):
            headers[i] = header
        reporter.update(files=len(found))
    reporter.close()
    return cast(List[Header], headers), stats, len(todo)  # every None was a job's, filled above
