"""Opening local files that someone else named: only regular files, and never a wait on one.

A FIFO blocks open() until a writer appears and a device (/dev/zero) never ends, so a path taken from a
manifest, a metadata.json or a folder walk is opened without blocking and checked with fstat before a byte
is read. Everything else is an OSError whose strerror says what the path is instead.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotRegularFile(OSError):
    """The path exists but is not a regular file."""


def kind_of(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a file"


def check_regular(path: str) -> None:
    """Raise NotRegularFile unless `path` (symlinks followed) is a regular file; FileNotFoundError if absent."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(0, f"not a regular file ({kind_of(mode)})", path)


def open_regular(path: str, buffering: int = -1) -> BinaryIO:
    """Open `path` for reading if it is a regular file (symlinks followed), without blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(0, f"not a regular file ({kind_of(mode)})", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to `limit` + 1 bytes: one more than allowed tells the caller the source is larger than it should be
    (an over-long or endless source is never read whole)."""
    return stream.read(limit + 1)
