"""Reading S3 objects: GetObject's body as a stream that resumes where a broken connection left it.

When the stream breaks (connection reset, read timeout, incomplete body, 5xx, SlowDown/throttling), GetObject is
issued again with `Range: bytes=<offset>-` and `If-Match: <ETag>`, so the stream goes on at the first byte not
yet handed to the reader and from the same version of the object, after an exponential backoff with jitter; it
gives up after `max_retries` consecutive failures or `give_up_after` seconds without a byte of progress,
whichever comes first. Stream requests are made without botocore's own retries (they would multiply every
stalled attempt by its attempt count before this logic even starts), so a stalled attempt fails after
`read_timeout` seconds, and a dead or frozen server is reported at the latest give_up_after + connect_timeout +
read_timeout seconds after the last byte arrived (150 s with the defaults). Requests that are not streams
(HEAD, LIST, PUT) rely on botocore's `standard` retries: at most api_attempts x (connect_timeout +
read_timeout) seconds each (120 s).
"""

from __future__ import annotations

import io
import logging
import re
import sys
import time
from typing import Any, Dict, Optional, Type

from ...errors import ShardError, SpgError
from ..local import read_at_most
from .client import MISSING_CODES, EarlyEnd, backoff, client, error, first_line, is_transient, stats
from .settings import MiB, S3Settings
from .urls import split_url

log = logging.getLogger("spgdataset")
BUFFER = 1 * MiB  # read size from a GetObject body


class S3Stream(io.RawIOBase):
    """GetObject's body as a read-only stream that resumes where a broken connection left it.

    The first response fixes the size (of the object, or of the range asked for) and the ETag; a resumed
    request asks for the rest with `Range: bytes=<offset>-` (to the range's end) and `If-Match: <ETag>` (a
    replaced object is an error, never a splice of two).
    """

    def __init__(self, url: str, s: S3Settings, error_class: Type[SpgError] = ShardError, first: int = 0,
                 length: Optional[int] = None) -> None:
        """The object from byte `first`, `length` bytes of it (None: to its end)."""
        super().__init__()
        self.url, self.error_class = url, error_class
        self.bucket, self.key = split_url(url)
        self.settings = s
        self.first, self.length = first, length
        self.position = 0  # bytes delivered so far
        self.size: Optional[int] = None  # from the first response: bytes this stream delivers
        self.etag: Optional[str] = None
        self.resumes = 0
        self._body: Any = None
        self._failures = 0
        self._progress_at = time.monotonic()  # when the last byte arrived (or the stream was made)
        self._retrying(self._request)

    def readable(self) -> bool:
        return True

    @property
    def reported_size(self) -> Optional[int]:
        """Bytes left in the object by its ContentLength (storage.local.read_at_most allocates that much, not
        what a manifest claims)."""
        return None if self.size is None else self.size - self.position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        return self._retrying(lambda: self._read_into(view))

    def _read_into(self, view: memoryview) -> int:
        if self.size is not None and self.position >= self.size:
            return 0
        if self._body is None:
            self._request()
        if hasattr(self._body, "readinto"):
            count = self._body.readinto(view)
        else:  # botocore before readinto()
            data = self._body.read(len(view))
            count = len(data)
            view[:count] = data
        if not count:
            raise EarlyEnd(f"body ended at byte {self.position} of {self.size}")
        self.position += count
        self._failures = 0
        self._progress_at = time.monotonic()
        return count

    def _request(self) -> None:
        kwargs: Dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        begin = self.first + self.position
        if begin or self.length is not None:
            kwargs["Range"] = f"bytes={begin}-{'' if self.length is None else self.first + self.length - 1}"
        if self.position:
            self.resumes += 1
            stats["resumed"] += 1
        if self.etag:
            kwargs["IfMatch"] = self.etag
        response = client(self.settings, attempts=1).get_object(**kwargs)
        if begin:
            found = re.match(r"bytes (\d+)-", str(response.get("ContentRange", "bytes 0-")))
            first = int(found.group(1)) if found else None
            if first != begin:
                response["Body"].close()
                raise self.error_class(f"{self.url}: asked for bytes from {begin}, got "
                                       f"{response.get('ContentRange')!r}")
        if not self.position:
            self.size, self.etag = response["ContentLength"], response.get("ETag")
        self._body = response["Body"]

    def _retrying(self, attempt: Any) -> Any:
        while True:
            try:
                return attempt()
            except SpgError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    self._drop()
                    raise error(self.settings, self.url, exc, self.error_class) from None
                self._drop()
                self._failures += 1
                waited = time.monotonic() - self._progress_at
                if self._failures > self.settings.max_retries or waited >= self.settings.give_up_after:
                    at = f"at byte {self.position} of {self.size}" if self.size is not None else "opening it"
                    raise error(self.settings, self.url, exc, self.error_class,
                                f"gave up after {self._failures} failed attempts and {waited:.0f} s without "
                                f"progress {at}") from None
                delay = min(backoff(self._failures, self.settings), self.settings.give_up_after - waited)
                log.info("%s: %s at byte %d; retrying in %.2f s", self.url, first_line(exc, self.settings),
                         self.position, delay)
                time.sleep(delay)

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            try:
                body.close()
            except Exception:  # a broken connection may fail to close; it is discarded either way
                pass

    def close(self) -> None:
        self._drop()
        super().close()


def read_range(url: str, s: S3Settings, first: int, length: int) -> bytes:
    """`length` bytes of the object from byte `first` (fewer where it ends): one range request, resumed as any
    stream is (one file of a shard, read/access.py)."""
    with io.BufferedReader(S3Stream(url, s, ShardError, first, length), buffer_size=BUFFER) as stream:
        return read_at_most(stream, length)


def read_object(url: str, s: S3Settings, missing_ok: bool = False, limit: Optional[int] = None) -> Optional[bytes]:
    """The whole object (small ones: manifest, index, state records); None if missing and `missing_ok`.
    With `limit`, at most limit + 1 bytes are read (the caller tells a too large object by its length);
    memory follows the object's size, not the limit."""
    try:
        with io.BufferedReader(S3Stream(url, s, SpgError), buffer_size=BUFFER) as stream:
            return read_at_most(stream, sys.maxsize if limit is None else limit)
    except SpgError as exc:
        if missing_ok and getattr(exc, "code", None) in MISSING_CODES:
            return None
        raise

