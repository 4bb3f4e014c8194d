"""Local files: reading files someone else named, and writing so that readers see all or nothing.

Reading: a FIFO blocks open() until a writer appears and a device (/dev/zero) never ends, so a path taken
from a manifest, a metadata.json or a folder walk is opened without blocking and checked with fstat before a
byte is read; anything but a regular file is an OSError whose strerror says what the path is instead.

Writing: every write goes to a temporary name in the same folder and is renamed when complete (LocalOutput,
the writer's output folder; storage.s3.S3Output is its S3 twin).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import re
import stat
import uuid
from typing import Any, BinaryIO, Callable, Dict, Iterable, Optional, Tuple

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
    (an over-long or endless source is never read whole).

    Memory is taken as bytes arrive, never `limit` up front (a manifest may claim 5 GiB for a 1 MB shard, and
    `read(n)` allocates n): one read of the size the source reports, when it is at most `limit` (fstat of a
    file; `reported_size` of a stream, such as S3's ContentLength), else blocks that double with what came.
    """
    try:
        size: Optional[int] = os.fstat(stream.fileno()).st_size - stream.tell()
    except (AttributeError, OSError, ValueError):  # not a file (io.UnsupportedOperation), or closed
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


class LocalOutput:
    """An output folder on a local file system: a name is either absent or whole (AtomicFile).

    Every written name has a stamp (size and mtime) that a listing gives back, so a rerun can tell that a
    shard is the one its state record describes without hashing it again (terabytes at 10,000 hours).
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def prepare(self) -> None:
        """Only checks: the folder is made when the run claims it (write/claim.py), after its inputs were found
        usable, so a run that fails early leaves nothing behind."""
        if os.path.lexists(self.root) and not os.path.isdir(self.root):
            raise SpgError(f"{self.root}: is a file, not a folder for the shards")

    def clean(self, owned: Callable[[str], bool]) -> None:
        """Remove what a killed run left half-written (temporary files) here and in the subfolders, for the
        names `owned` says are this run's (not another part's of a split run, which may be writing)."""
        folders = [""] + [e.name for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
        for folder in folders:
            for name in os.listdir(os.path.join(self.root, folder)):
                base = temporary_of(name)
                if base is not None and owned(posixpath.join(folder, base)):
                    os.remove(os.path.join(self.root, folder, name))

    def read(self, name: str) -> Optional[bytes]:
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def read_many(self, names: Iterable[str]) -> Dict[str, Optional[bytes]]:
        return {name: self.read(name) for name in names}

    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> str:
        writer = self.create(name)
        for part in parts:
            writer.write(part)
        return writer.commit(sha256)

    def create(self, name: str) -> AtomicFile:
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return AtomicFile(path)

    def entries(self, folder: str = "") -> Dict[str, Tuple[str, str]]:
        """{name: (kind, stamp)} of everything directly in the folder (or its `folder`): kind "file" (with its
        stamp), "folder", or what else it is ("a symlink", "a FIFO", ...; stamp ""), so that a check of what the
        folder holds misses nothing."""
        try:
            found = list(os.scandir(os.path.join(self.root, folder)))
        except (FileNotFoundError, NotADirectoryError):
            return {}
        kinds = {e.name: _entry_kind(e) for e in found}
        return {e.name: (kinds[e.name], stamp_of(e.stat(follow_symlinks=False)) if kinds[e.name] == "file" else "")
                for e in found}

    def read_head(self, name: str, size: int) -> Optional[bytes]:
        """The first `size` bytes of a regular file; None when it is not one or cannot be read."""
        try:
            with open_regular(os.path.join(self.root, name), buffering=0) as f:
                return read_at_most(f, size - 1)  # memory as bytes arrive, never `size` up front
        except OSError:
            return None

    def try_lock(self, name: str, holder: bytes, shared: bool = False) -> Optional["LocalLock"]:
        """An flock on the file `name` (made if absent), or None when another process holds it. The kernel
        releases it when its holder dies, however it dies, so a lock file left behind never blocks a rerun.
        An exclusive holder writes `holder` (who it is) into the file, for the message of the one refused."""
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise SpgError(f"{path}: cannot open the lock file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder, 0)
        return LocalLock(fd)

    def lock_holder(self, name: str) -> Optional[bytes]:
        """What the holder of the lock file `name` wrote of itself, when someone holds it exclusively; else None."""
        try:
            fd = os.open(os.path.join(self.root, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 4096, 0)
        finally:
            os.close(fd)  # closing also drops a shared lock taken only to look
        return None

    def listing(self, folder: str = "") -> Dict[str, str]:
        """{name: stamp} of the files directly in the folder (or its `folder`)."""
        try:
            entries = list(os.scandir(os.path.join(self.root, folder)))
        except FileNotFoundError:
            return {}
        return {e.name: stamp_of(e.stat(follow_symlinks=False)) for e in entries if e.is_file(follow_symlinks=False)}

    def matches(self, name: str, size: int, sha256: str) -> bool:
        """For state records written before stamps: the file is there with this size and sha256."""
        path = os.path.join(self.root, name)
        return os.path.exists(path) and os.path.getsize(path) == size and sha256_file(path) == sha256

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.root, name))


class LocalLock:
    """An flock held on an open lock file until `release` (or the process's end)."""

    lost = False  # an flock is never taken away from a living holder

    def __init__(self, fd: int) -> None:
        self.fd: Optional[int] = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


def _entry_kind(entry: "os.DirEntry[str]") -> str:
    if entry.is_symlink():
        return "a symlink"
    if entry.is_dir(follow_symlinks=False):
        return "folder"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return kind_of(entry.stat(follow_symlinks=False).st_mode)

