"""A shard folder on local disk, read by datasets and written by runs (storage/s3/prefix.py's S3Storage is the
S3 one): files only ever read as regular files, written whole or not at all, locked with flock.
"""

from __future__ import annotations

import fcntl
import os
import posixpath
import stat
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, Optional, Tuple

from ..errors import ShardError, SpgError
from .local import (AtomicFile, Identity, hash_file, kind_of, map_file, open_regular, read_at_most, read_span,
                    reading, sha256_file, stamp_of, temporary_of)


class LocalStorage:
    """A shard folder on a local file system (the `Storage` protocol, storage/): a name is either absent or whole
    (AtomicFile).

    Every written name has a stamp (size and mtime) that a listing gives back, so a rerun can tell that a
    shard is the one its state record describes without hashing it again (terabytes at 10,000 hours).
    """

    local = True

    def __init__(self, root: str) -> None:
        self.root = root

    def url(self, name: str) -> str:
        return os.path.join(self.root, name)

    def will_read(self, name: str) -> None:
        """Ask the kernel to read file `name` into the page cache now, in the background (posix_fadvise
        WILLNEED): the disk works while this process builds batches, with no thread of ours (a thread that reads
        a cached shard competes for memory bandwidth and the GIL: 10% more CPU an epoch). A hint: a file that
        cannot be opened is ignored here, and reported when it is read."""
        advise = getattr(os, "posix_fadvise", None)
        if advise is None:
            return
        try:
            fd = os.open(self.url(name), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return os.path.isdir(self.root)

    def read_bytes(self, name: str, limit: int, missing_ok: bool = False, what: str = "cannot read") -> Optional[bytes]:
        """At most `limit` + 1 bytes of a regular file (more than `limit`: the caller says it is too large, without
        reading it whole); None when it is missing and `missing_ok`."""
        path = self.url(name)
        with reading(path, what):
            try:
                with open_regular(path) as f:
                    return read_at_most(f, limit)
            except FileNotFoundError:
                if missing_ok:
                    return None
                raise

    def read_checked(self, name: str, limit: int, check: Callable[[int, str], None], what: str) -> Tuple[Any, Identity]:
        """A read-only memory map of the file and its identity, after `check(size, sha256)` let it pass: hashed
        with plain reads first (so the check leaves no pages in this process), mapped only if still that file."""
        path = self.url(name)
        size, digest, identity = hash_file(path, limit, what)
        check(size, digest)
        return map_file(path, identity), identity

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes of a regular file from byte `offset` (fewer where it ends): one file of a shard
        (read/access.py), in one pread."""
        path = self.url(name)
        try:
            with open_regular(path, buffering=0) as f:
                return read_span(f.fileno(), offset, length)
        except OSError as exc:
            raise ShardError(f"{path}: cannot read shard: {exc.strerror or exc}") from None

    def open_shard(self, name: str, size: Optional[int] = None, sha256: Optional[str] = None) -> BinaryIO:
        """A regular file, buffered; `size` and `sha256` are the reader's to check (S3 keys its cache by them)."""
        path = self.url(name)
        try:
            return open_regular(path, buffering=1 << 20)
        except OSError as exc:
            raise ShardError(f"{path}: cannot open shard: {exc.strerror or exc}") from None

    def holds_files(self, extensions: Collection[str]) -> bool:
        """Whether the folder (or its first level of subfolders) holds files with these extensions: the user gave
        an audio folder where shards were expected."""
        if not os.path.isdir(self.root):
            return False
        for folder, dirs, files in os.walk(self.root):
            if any(os.path.splitext(name)[1].lower() in extensions for name in files):
                return True
            if os.path.relpath(folder, self.root).count(os.sep) >= 1:
                dirs[:] = []
        return False

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

