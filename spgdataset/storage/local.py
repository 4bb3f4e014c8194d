"""Local files: reading files someone else named, and writing so that readers see all or nothing.

Reading: a FIFO blocks open() until a writer appears and a device (/dev/zero) never ends, so a path taken
from a manifest, a metadata.json or a folder walk is opened without blocking and checked with fstat before a
byte is read; anything but a regular file is an OSError whose strerror says what the path is instead. A file
checked by its digest is memory-mapped only if it is still that very file (`hash_file`, `map_file`).

Writing: every write goes to a temporary name in the same folder and is renamed when complete (AtomicFile; the
shard folder built on these is storage/folder.py's LocalStorage).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import stat
import uuid
from typing import Any, BinaryIO, Iterator, Optional, Tuple

from ..errors import ShardError, SpgError

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


@contextlib.contextmanager
def reading(path: str, what: str) -> Iterator[None]:
    """An OSError while reading `path` as one SpgError naming it and saying what was being read."""
    try:
        yield
    except FileNotFoundError:
        raise SpgError(f"{path}: {what}: no such file") from None
    except OSError as exc:
        raise SpgError(f"{path}: {what}: {exc.strerror or exc}") from None


Identity = Tuple[int, int, int, int]  # (device, inode, size, mtime) of one version of a file


def identity_of(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def hash_file(path: str, limit: int, what: str) -> Tuple[int, str, Identity]:
    """(bytes, sha256, identity) of a regular file, read in blocks, at most limit + 1 bytes: plain reads, so
    checking a large file leaves none of its pages in this process's memory."""
    digest, size = hashlib.sha256(), 0
    with reading(path, what), open_regular(path) as f:
        identity = identity_of(os.fstat(f.fileno()))
        while size <= limit:
            block = f.read(min(1 << 22, limit + 1 - size))
            if not block:
                break
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest(), identity


def map_file(path: str, identity: Identity) -> mmap.mmap:
    """A read-only map of the file whose digest was checked: it must still be that very file (not replaced
    since, in this process or, for a spawned worker, in its parent)."""
    with open_regular(path) as f:
        if identity_of(os.fstat(f.fileno())) != identity:
            raise ShardError(f"{path}: the file index changed since it was checked")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def read_at_most(stream: BinaryIO, limit: int) -> bytes:
    """Up to `limit` + 1 bytes: one more than allowed tells the caller the source is larger than it should be
    (an over-long or endless source is never read whole).

    Memory is taken as bytes arrive, never `limit` up front (a manifest may claim 5 GiB for a 1 MB shard, and
    `read(n)` allocates n): one read of the size the source reports, when it is at most `limit` (fstat of a
    file; `reported_size` of a stream, such as S3's ContentLength), else blocks that double with what came.
    """
    size = file_bytes_left(stream)
    if size is None:
        size = getattr(getattr(stream, "raw", stream), "reported_size", None)
    request = size + 1 if size is not None and 0 <= size <= limit else min(limit + 1, 1 << 20)
    parts: list[bytes] = []
    total = 0
    while total <= limit:
        block = stream.read(request)
        if not block:
            break
        parts.append(block)
        total += len(block)
        # at the reported size one byte says whether more came since; else a block as large as what came
        request = 1 if total == size else min(limit + 1 - total, max(total, 1 << 20))
    return parts[0] if len(parts) == 1 else b"".join(parts)


def file_bytes_left(stream: Any) -> Optional[int]:
    """Bytes from the stream's position to the end of the file under it (fstat); None when it is not a file."""
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell()
    except (AttributeError, OSError, ValueError):  # not a file (io.UnsupportedOperation), or closed
        return None


def read_span(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes of an open file from byte `offset`, fewer only where the file ends (one pread returns
    at most about 2 GiB on Linux)."""
    parts: list[bytes] = []
    while length > 0:
        block = os.pread(fd, length, offset)
        if not block:
            break
        parts.append(block)
        offset, length = offset + len(block), length - len(block)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def write_bytes_atomic(path: str, *parts: Any) -> None:
    """Write `parts` (bytes-like, in order) to a temporary name in the same folder, then rename: readers
    see all or nothing. A failure (a full disk) is an SpgError naming `path`; the temporary file is removed."""
    writer = AtomicFile(path)
    try:
        for part in parts:
            writer.write(part)
    except BaseException:
        writer.discard()
        raise
    writer.commit()


def temporary_name(path: str) -> str:
    """Unique to this write: two writers of one name (a task Dask runs twice, on two hosts with one pid) must
    not share a temporary file."""
    return f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}"


_TEMPORARY = re.compile(r"\.(.+)\.tmp[0-9]+(-[0-9a-f]+)?")


def temporary_of(name: str) -> Optional[str]:
    """The name a temporary file (temporary_name's, or one of a run before the uuid) was writing; else None."""
    match = _TEMPORARY.fullmatch(name)
    return match.group(1) if match else None


class AtomicFile:
    """A file written piece by piece under a temporary name and renamed when complete (`commit`): readers see
    all or nothing, and a large output is never held in memory. A failure is an SpgError naming `path`."""

    def __init__(self, path: str) -> None:
        self.path, self.tmp = path, temporary_name(path)
        self.file = self._call(open, self.tmp, "wb", 1 << 20)  # few large writes, not one per piece

    def write(self, data: Any) -> None:
        self._call(self.file.write, data)

    def commit(self, sha256: Optional[str] = None) -> str:
        """Flush to disk and rename into place; the file's stamp (size and mtime). `sha256` is for the S3 twin,
        which stores it with the object."""
        self._call(self.file.flush)
        self._call(os.fsync, self.file.fileno())
        self.file.close()
        self._call(os.replace, self.tmp, self.path)
        return stamp_of(os.stat(self.path))

    def discard(self) -> None:
        for undo in (self.file.close, lambda: os.remove(self.tmp)):
            try:
                undo()
            except OSError:  # closing flushes what the full disk refused; the file may be gone already
                pass

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except OSError as exc:
            if getattr(self, "file", None) is not None:
                self.discard()
            raise SpgError(f"{self.path}: cannot write: {exc.strerror or exc}") from None


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stamp_of(stat: os.stat_result) -> str:
    """What identifies one version of a file without reading it: its size and modification time (ns)."""
    return f"{stat.st_size}:{stat.st_mtime_ns}"
