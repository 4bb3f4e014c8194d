"""A local cache of S3 shards, and `shard_stream`: a shard from the cache when it holds a verified copy, else S3.

Shards are kept on local disk under their sha256 from the manifest, hashed again before a cached copy is used
(a corrupt one is dropped and fetched again), filled while the shard is streamed to its first reader
(temporary file, renamed when complete and verified), least recently used evicted so the folder stays under
`cache_bytes` (in-flight temporary files count too). Several processes may share it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from typing import Any, BinaryIO, Optional

from ...errors import ShardError
from ...format.names import is_sha256
from .client import stats
from .settings import S3Settings
from .stream import BUFFER, S3Stream

log = logging.getLogger("spgdataset")


def shard_stream(url: str, s: S3Settings, size: Optional[int] = None, sha256: Optional[str] = None) -> BinaryIO:
    """A buffered stream over the shard at `url`: from the cache (when `s` has one and the manifest's `size` and
    `sha256` are given) if it holds a verified copy, else streamed from S3 (and cached when the object's size is
    the manifest's)."""
    if s.cache_dir and sha256 and size is not None:
        return ShardCache(s).open(url, size, sha256)
    return io.BufferedReader(S3Stream(url, s), buffer_size=BUFFER)


class ShardCache:
    """The folder `cache_dir` of shards named `<sha256>.tar`, least recently used (by mtime) evicted past
    `cache_bytes`; missing shards are streamed with the same settings.

    Content-addressed, so a shard rewritten under the same name is a different entry, and a cached copy is
    checked against its name (the manifest's sha256) every time before it is used.
    """

    STALE_SECONDS = 600  # a temporary file untouched this long was left by a killed process

    def __init__(self, s: S3Settings) -> None:
        if not s.cache_dir:
            raise ValueError("ShardCache needs settings with a cache_dir")
        self.settings, self.directory, self.limit = s, s.cache_dir, int(s.cache_bytes)
        os.makedirs(self.directory, exist_ok=True)

    def path(self, sha256: str) -> str:
        """`<sha256>.tar` in the cache folder; the digest comes from a manifest, so it is checked to be one
        (anything else could name a file outside the folder, which a failed check would then delete)."""
        if not is_sha256(sha256):
            raise ShardError(f"{self.directory}: {sha256!r} is not a sha256 digest; refusing it as a cache name")
        return os.path.join(self.directory, f"{sha256}.tar")

    def open(self, url: str, size: int, sha256: str) -> BinaryIO:
        cached = self._verified(url, sha256)
        if cached is not None:
            stats["cache_hits"] += 1
            return cached
        stats["cache_misses"] += 1
        stream = S3Stream(url, self.settings)
        if stream.size != size or size > self.limit:  # another size than claimed: the reader says so, and no
            return io.BufferedReader(stream, buffer_size=BUFFER)  # room is made (nothing evicted) for a claim
        try:
            self.make_room(size)
            fd, tmp = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".tmp", dir=self.directory)
        except BaseException:
            stream.close()
            raise
        return io.BufferedReader(_Fill(stream, os.fdopen(fd, "wb"), tmp, self, size, sha256), buffer_size=BUFFER)

    def _verified(self, url: str, sha256: str) -> Optional[BinaryIO]:
        path = self.path(sha256)
        try:
            f = open(path, "rb", buffering=BUFFER)
        except FileNotFoundError:
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(BUFFER), b""):
            digest.update(block)
        if digest.hexdigest() == sha256:  # the shard named by that digest, whatever size a manifest claims for it
            f.seek(0)  # (the reader compares sizes: a copy is never dropped because a manifest lied)
            try:
                os.utime(path)  # most recently used
            except FileNotFoundError:  # evicted by another process meanwhile; our open handle still reads it
                pass
            return f
        f.close()
        stats["cache_corrupt"] += 1
        log.warning("%s: cached copy %s is corrupt (its sha256 is not the manifest's); fetching it again",
                    url, path)
        _remove(path)
        return None

    def make_room(self, incoming: int) -> None:
        """Evict least recently used shards until what is on disk plus `incoming` bytes fits the limit."""
        entries, used, now = [], 0, time.time()
        with os.scandir(self.directory) as it:
            for entry in it:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.endswith(".tar"):
                    entries.append((st.st_mtime, entry.path, st.st_size))
                elif entry.name.endswith(".tmp") and now - st.st_mtime > self.STALE_SECONDS:
                    _remove(entry.path)
                    continue
                used += st.st_size
        for _, path, nbytes in sorted(entries):
            if used + incoming <= self.limit:
                break
            if _remove(path):
                stats["cache_evictions"] += 1
            used -= nbytes

    def commit(self, tmp: str, sha256: str) -> None:
        os.replace(tmp, self.path(sha256))
        self.make_room(0)


class _Fill(io.RawIOBase):
    """Pass a shard's stream through to the reader while writing it to a temporary file of the cache; at
    the end, keep it under its sha256 if size and digest agree with the manifest, else drop it."""

    def __init__(self, stream: S3Stream, file: BinaryIO, tmp: str, cache: ShardCache, size: int,
                 sha256: str) -> None:
        super().__init__()
        self.stream, self.file, self.tmp, self.cache = stream, file, tmp, cache
        self.size, self.sha256 = size, sha256
        self.digest, self.written, self.done = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    @property
    def reported_size(self) -> Optional[int]:
        return self.stream.reported_size

    def readinto(self, buffer: Any) -> int:
        count = self.stream.readinto(buffer)
        if count:
            data = memoryview(buffer)[:count]
            self.file.write(data)
            self.digest.update(data)
            self.written += count
        elif not self.done:
            self._finish()
        return count

    def _finish(self) -> None:
        self.done = True
        self.file.close()
        if self.written == self.size and self.digest.hexdigest() == self.sha256:
            self.cache.commit(self.tmp, self.sha256)
        else:
            _remove(self.tmp)  # the reader's own sha256 check reports the mismatch

    def close(self) -> None:
        if not self.closed:
            if not self.done:  # the reader stopped early: an incomplete copy is not kept
                self.done = True
                self.file.close()
                _remove(self.tmp)
            self.stream.close()
        super().close()


def _remove(path: str) -> bool:
    try:
        os.remove(path)
        return True
    except FileNotFoundError:
        return False
