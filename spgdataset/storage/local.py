"""Local files: reading files someone else named, and writing so that readers see all or nothing.

Reading: a FIFO blocks open() until a writer appears and a device (/dev/zero) never ends, so a path taken
from a manifest, a metadata.json or a folder walk is opened without blocking and checked with fstat before a
byte is read; anything but a regular file is an OSError whose strerror says what the path is instead.

Writing: every write goes to a temporary name in the same folder and is renamed when complete (LocalOutput,
the writer's output folder; storage.s3.S3Output is its S3 twin).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, BinaryIO, List, Optional

from ..errors import SpgError

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


def write_bytes_atomic(path: str, *parts: Any) -> None:
    """Write `parts` (bytes-like, in order) to a temporary name in the same folder, then rename: readers
    see all or nothing. A failure (a full disk) is an SpgError naming `path`; the temporary file is removed."""
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise SpgError(f"{path}: cannot write: {exc.strerror or exc}") from None


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalOutput:
    """An output folder on a local file system: a name is either absent or whole (write_bytes_atomic)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def prepare(self, clean_temporaries: bool) -> None:
        """Make the folder; with `clean_temporaries`, remove what a killed run left half-written in it and in
        its subfolders (not when other parts of a split run may be writing theirs)."""
        os.makedirs(self.root, exist_ok=True)
        if not clean_temporaries:
            return
        folders = [self.root] + [e.path for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        for folder in folders:
            for name in os.listdir(folder):
                if name.startswith(".") and ".tmp" in name:
                    os.remove(os.path.join(folder, name))

    def read(self, name: str) -> Optional[bytes]:
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> None:
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes_atomic(path, *parts)

    def matches(self, name: str, size: int, sha256: str) -> bool:
        path = os.path.join(self.root, name)
        return os.path.exists(path) and os.path.getsize(path) == size and sha256_file(path) == sha256

    def names(self, folder: str = "") -> List[str]:
        try:
            return os.listdir(os.path.join(self.root, folder))
        except FileNotFoundError:
            return []

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.root, name))
