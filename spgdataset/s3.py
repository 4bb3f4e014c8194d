"""`s3://bucket/prefix` for reading and writing shards, through boto3.

Why boto3 rather than fsspec/s3fs: it is AWS's own maintained client; it finds credentials through the
standard chain (AWS_ACCESS_KEY_ID/..., AWS_PROFILE and ~/.aws, SSO, container and instance roles) and the
region as the aws CLI does; it takes an explicit endpoint for S3-compatible stores (MinIO, Ceph, R2, ...);
its retries are a documented config (`standard` mode); and its transfer manager does parallel multipart
uploads. s3fs would add fsspec and aiobotocore (an async fork of botocore pinned to exact botocore versions)
for the same few requests. boto3 is imported only when an s3:// URL is used (`pip install "spgdataset[s3]"`).

Settings come from `configure(...)` in code, else from the environment: AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL (endpoint of an S3-compatible store), SPG_S3_CACHE_DIR and SPG_S3_CACHE_BYTES (local
shard cache). Environment variables reach DataLoader workers and `spg-shard` runs by themselves; what
`configure()` sets travels with a dataset into spawned workers (see source.ShardSet).

Reading: `open_shard(url)` streams GetObject's body; nothing is downloaded first. When the stream breaks
(connection reset, read timeout, incomplete body, 5xx, SlowDown/throttling), GetObject is issued again with
`Range: bytes=<offset>-` and `If-Match: <ETag>`, so the stream goes on at the first byte not yet handed
to the reader and from the same version of the object, after an exponential backoff with jitter; it gives
up after `max_retries` consecutive failures or `give_up_after` seconds without a byte of progress, whichever
comes first. Stream requests are made without botocore's own retries (they would multiply every stalled
attempt by its attempt count before this logic even starts), so a stalled attempt fails after `read_timeout`
seconds, and a dead or frozen server is reported at the latest give_up_after + connect_timeout +
read_timeout seconds after the last byte arrived (150 s with the defaults). Requests that are not streams
(HEAD, LIST, PUT) rely on botocore's `standard` retries: at most api_attempts x (connect_timeout +
read_timeout) seconds each (120 s).

Cache (optional): shards are kept on local disk under their sha256 from the manifest, hashed again before
a cached copy is used (a corrupt one is dropped and fetched again), filled while the shard is streamed to
its first reader (temporary file, renamed when complete and verified), least recently used evicted so the
folder stays under `cache_bytes` (in-flight temporary files count too). Several processes may share it.

Writing: `S3Output` is the writer's output folder at a prefix (writer.py keeps the local twin): uploads
through boto3's transfer manager (multipart from `multipart_threshold` up), each shard with its sha256 as
object metadata, so a rerun can tell a finished shard from a HEAD request.

Clients: one per process and settings, created on first use. A client is never used across a fork
(DataLoader workers): the client table is keyed by os.getpid() and emptied in a forked child.

webdataset: importing this module adds an "s3" handler to webdataset's gopen table (if none is there), so
`wds.WebDataset("s3://...")` and `wds.TarWriter("s3://...")` work through the same code.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import logging
import os
import random
import re
import tempfile
import threading
import time
from typing import Any, BinaryIO, Dict, List, Optional, Tuple, Type

from .errors import ShardError, SpgError
from .manifest import is_sha256

log = logging.getLogger("spgdataset")

MiB, GiB = 2**20, 2**30
SCHEME = "s3://"
BUFFER = 1 * MiB  # read size from a GetObject body

# Counters of this process (tests, benchmarks, debugging): resumed streams, cache hits/misses/evictions...
stats: "collections.Counter[str]" = collections.Counter()


def is_s3_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def split_url(url: str) -> Tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not is_s3_url(url) or not bucket:
        raise SpgError(f"{url}: not an s3://bucket/key URL")
    return bucket, key


# ---------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """How to reach S3. None means: what boto3 finds (environment, ~/.aws, instance role)."""

    endpoint_url: Optional[str] = None  # S3-compatible store; env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
    region_name: Optional[str] = None  # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    profile_name: Optional[str] = None  # None: AWS_PROFILE or the default profile
    addressing_style: Optional[str] = None  # None: "path" with a custom endpoint, else boto3's "auto"
    max_retries: int = 6  # consecutive failed attempts (no byte of progress) before a stream gives up
    give_up_after: float = 120.0  # seconds without a byte of progress before a stream gives up
    retry_base_delay: float = 0.25  # seconds before the first retry; doubles per failure, with jitter
    retry_max_delay: float = 10.0  # seconds, cap of one backoff
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 20.0  # seconds without a byte before a read counts as failed
    api_attempts: int = 4  # botocore `standard` retry mode: total attempts of one request
    multipart_threshold: int = 8 * MiB  # bytes: objects this large are uploaded in parts
    multipart_chunksize: int = 8 * MiB  # bytes per part (S3's minimum is 5 MiB, except the last part)
    max_concurrency: int = 4  # parts uploaded at once
    cache_dir: Optional[str] = None  # local shard cache; env SPG_S3_CACHE_DIR; None: no cache
    cache_bytes: int = 10 * GiB  # cache size limit in bytes; env SPG_S3_CACHE_BYTES (e.g. "50G")


_FIELDS = {f.name for f in dataclasses.fields(S3Settings)}
_overrides: Dict[str, Any] = {}


def configure(**changes: Any) -> S3Settings:
    """Set S3 settings for this process (and, through a dataset, its spawned workers); returns them all.

    `configure(endpoint_url="http://127.0.0.1:9000", cache_dir="/scratch/shards", cache_bytes=50 * 2**30)`.
    A value of None removes a setting made here, so the environment or the default applies again.
    """
    unknown = set(changes) - _FIELDS
    if unknown:
        raise TypeError(f"configure(): unknown setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    for name, value in changes.items():
        if value is None:
            _overrides.pop(name, None)
        else:
            _overrides[name] = parse_size(value) if name == "cache_bytes" else value
    return settings()


def overrides() -> Dict[str, Any]:
    """What configure() set in this process (a copy)."""
    return dict(_overrides)


def adopt(values: Dict[str, Any]) -> None:
    """Take settings from the process that opened a dataset, unless this process configured its own."""
    if values and not _overrides:
        configure(**values)


def reset() -> None:
    """Forget configure() settings, clients and counters (tests)."""
    _overrides.clear()
    stats.clear()
    with _lock:
        _clients.clear()


def settings() -> S3Settings:
    env: Dict[str, Any] = {}
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            env["endpoint_url"] = endpoint
    if os.environ.get("SPG_S3_CACHE_DIR"):
        env["cache_dir"] = os.environ["SPG_S3_CACHE_DIR"]
    if os.environ.get("SPG_S3_CACHE_BYTES"):
        env["cache_bytes"] = parse_size(os.environ["SPG_S3_CACHE_BYTES"])
    return S3Settings(**{**env, **_overrides})


def parse_size(value: Any) -> int:
    """Bytes from 123, "123", "512M", "50G", "1.5TiB" (binary units)."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise SpgError(f"cache size {value!r}: expected bytes, or a number with K, M, G or T")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


# ---------------------------------------------------------------- clients


_lock = threading.Lock()
_clients: Dict[Tuple[Any, ...], Any] = {}


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread at the fork
    _clients.clear()  # sockets and pools of the parent's clients must not be shared


os.register_at_fork(after_in_child=_after_fork_in_child)


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise SpgError('s3:// URLs need boto3: pip install "spgdataset[s3]"') from None
    return boto3


def client(config: Optional[S3Settings] = None, attempts: Optional[int] = None) -> Any:
    """The boto3 S3 client of this process for these settings (created on first use). `attempts`: botocore's
    total attempts per request (default `api_attempts`; streams use 1 and retry themselves)."""
    s = config or settings()
    attempts = s.api_attempts if attempts is None else attempts
    key = (os.getpid(), s.endpoint_url, s.region_name, s.profile_name, s.addressing_style, s.connect_timeout,
           s.read_timeout, attempts)
    with _lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = _new_client(s, attempts)
    return found


def _new_client(s: S3Settings, attempts: int) -> Any:
    boto3 = _boto3()
    from botocore.config import Config
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.session.Session(profile_name=s.profile_name)
    except ProfileNotFound as exc:
        raise SpgError(f"AWS profile: {exc}") from None
    style = s.addressing_style or ("path" if s.endpoint_url else "auto")
    config = Config(retries={"mode": "standard", "total_max_attempts": attempts},
                    connect_timeout=s.connect_timeout, read_timeout=s.read_timeout, max_pool_connections=16,
                    s3={"addressing_style": style})
    return session.client("s3", endpoint_url=s.endpoint_url, region_name=s.region_name, config=config)


# ---------------------------------------------------------------- errors


_EXPLAINED = {
    "NoSuchBucket": "bucket {bucket!r} does not exist",
    "NoSuchKey": "no such object",
    "404": "no such object",
    "NotFound": "no such object",
    "AccessDenied": "access denied (the credentials in use are not allowed this; check the IAM policy)",
    "403": "access denied (the credentials in use are not allowed this; check the IAM policy)",
    "InvalidAccessKeyId": "the access key id is not known to the endpoint (check AWS_ACCESS_KEY_ID / AWS_PROFILE)",
    "SignatureDoesNotMatch": "request signature does not match (wrong AWS_SECRET_ACCESS_KEY?)",
    "ExpiredToken": "the session token has expired (refresh the credentials)",
    "InvalidToken": "the session token is invalid (check AWS_SESSION_TOKEN)",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name",
    "PreconditionFailed": "the object was replaced while it was being read",
}
_MISSING = ("NoSuchKey", "404", "NotFound")
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
                    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
                    "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded", "500", "502", "503", "504"}


def _code(exc: BaseException) -> Optional[str]:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def is_transient(exc: BaseException) -> bool:
    """Worth another try: broken connections, timeouts, incomplete bodies, 5xx, throttling."""
    import http.client

    from botocore import exceptions as bex
    from urllib3 import exceptions as u3

    if isinstance(exc, bex.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return _code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError, u3.ProtocolError,
                            u3.TimeoutError, http.client.IncompleteRead, ConnectionError, TimeoutError,
                            _EarlyEnd))


def error(url: str, exc: BaseException, cls: Type[SpgError] = SpgError, doing: str = "") -> SpgError:
    """An SpgError (or ShardError) naming the URL and saying what went wrong, in one line; `.code` is the S3
    error code when there is one (NoSuchKey, AccessDenied, ...)."""
    from botocore import exceptions as bex

    if isinstance(exc, SpgError):
        return exc
    endpoint = settings().endpoint_url
    head = f"{url}: {doing + ': ' if doing else ''}"
    code = _code(exc) or _upload_error_code(exc)
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        text = ("no AWS credentials found (looked at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and "
                "~/.aws, SSO, container and instance roles)")
    elif code is not None:
        explained = _EXPLAINED.get(code)
        bucket = split_url(url)[0] if is_s3_url(url) else ""
        text = explained.format(bucket=bucket) if explained else (_message(exc) or "request failed")
        text += f" ({code}{', endpoint ' + endpoint if endpoint else ''})"
    else:
        text = f"{type(exc).__name__}: {_first_line(exc)}{' (endpoint ' + endpoint + ')' if endpoint else ''}"
    made = cls(head + text)
    made.code = code  # type: ignore[attr-defined]
    return made


def _upload_error_code(exc: BaseException) -> Optional[str]:
    """boto3's S3UploadFailedError carries the ClientError only in its text."""
    match = re.search(r"An error occurred \(([A-Za-z0-9]+)\)", str(exc))
    return match.group(1) if match and type(exc).__name__ == "S3UploadFailedError" else None


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Message", "") if isinstance(response, dict) else ""


def _first_line(exc: BaseException) -> str:
    if type(exc).__name__ == "ReadTimeoutError":  # botocore's text names no URL ("endpoint URL: None")
        return f"no data for {settings().read_timeout:g} s (read timeout)"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class _EarlyEnd(Exception):
    """The body ended before the object's last byte without an error from the HTTP layer."""


def backoff(failures: int, s: S3Settings) -> float:
    """Seconds to wait after the n-th consecutive failure: exponential, capped, with equal jitter."""
    ceiling = min(s.retry_max_delay, s.retry_base_delay * 2 ** (failures - 1))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


_jitter = random.Random()  # private: never consume the global generator that seeded code may rely on


# ---------------------------------------------------------------- reading


class S3Stream(io.RawIOBase):
    """GetObject's body as a read-only stream that resumes where a broken connection left it.

    The first response fixes the object's size and ETag; a resumed request asks for the rest with
    `Range: bytes=<offset>-` and `If-Match: <ETag>` (a replaced object is an error, never a splice of two).
    """

    def __init__(self, url: str, error_class: Type[SpgError] = ShardError) -> None:
        super().__init__()
        self.url, self.error_class = url, error_class
        self.bucket, self.key = split_url(url)
        self.settings = settings()
        self.position = 0  # bytes delivered so far
        self.size: Optional[int] = None  # from the first response
        self.etag: Optional[str] = None
        self.resumes = 0
        self._body: Any = None
        self._failures = 0
        self._progress_at = time.monotonic()  # when the last byte arrived (or the stream was made)
        self._retrying(self._request)

    def readable(self) -> bool:
        return True

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
            raise _EarlyEnd(f"body ended at byte {self.position} of {self.size}")
        self.position += count
        self._failures = 0
        self._progress_at = time.monotonic()
        return count

    def _request(self) -> None:
        kwargs: Dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self.position:
            kwargs["Range"] = f"bytes={self.position}-"
            self.resumes += 1
            stats["resumed"] += 1
        if self.etag:
            kwargs["IfMatch"] = self.etag
        response = client(self.settings, attempts=1).get_object(**kwargs)
        if self.position:
            found = re.match(r"bytes (\d+)-", str(response.get("ContentRange", "bytes 0-")))
            first = int(found.group(1)) if found else None
            if first != self.position:
                response["Body"].close()
                raise self.error_class(f"{self.url}: asked for bytes from {self.position}, got "
                                       f"{response.get('ContentRange')!r}")
        else:
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
                    raise error(self.url, exc, self.error_class) from None
                self._drop()
                self._failures += 1
                waited = time.monotonic() - self._progress_at
                if self._failures > self.settings.max_retries or waited >= self.settings.give_up_after:
                    at = f"at byte {self.position} of {self.size}" if self.size is not None else "opening it"
                    raise error(self.url, exc, self.error_class,
                                f"gave up after {self._failures} failed attempts and {waited:.0f} s without "
                                f"progress {at}") from None
                delay = min(backoff(self._failures, self.settings), self.settings.give_up_after - waited)
                log.info("%s: %s at byte %d; retrying in %.2f s", self.url, _first_line(exc), self.position, delay)
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


def read_bytes(url: str, missing_ok: bool = False, error_class: Type[SpgError] = SpgError,
               limit: Optional[int] = None) -> Optional[bytes]:
    """The whole object (small ones: manifest, index, state records); None if missing and `missing_ok`.
    With `limit`, at most limit + 1 bytes are read (the caller tells a too large object by its length)."""
    try:
        with S3Stream(url, error_class) as stream:
            return _read_all(stream, limit)
    except SpgError as exc:
        if missing_ok and getattr(exc, "code", None) in _MISSING:
            return None
        raise


def _read_all(stream: S3Stream, limit: Optional[int]) -> bytes:
    out = bytearray()
    chunk = bytearray(BUFFER)
    while limit is None or len(out) <= limit:
        count = stream.readinto(chunk)
        if not count:
            break
        out += chunk[:count]
    return bytes(out if limit is None else out[: limit + 1])


def prefix_exists(url: str) -> bool:
    """Whether any object lies under `url` taken as a folder."""
    bucket, key = split_url(url)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    try:
        response = client().list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:
        raise error(url, exc) from None
    return bool(response.get("KeyCount"))


# Shards that a manifest describes in this process: url -> (bytes, sha256). The cache needs the sha256.
_known: Dict[str, Tuple[int, Optional[str]]] = {}


def register(url: str, size: int, sha256: Optional[str]) -> None:
    _known[url] = (size, sha256)


def open_shard(url: str) -> BinaryIO:
    """A buffered stream over the shard at `url`: from the cache when it holds a verified copy, else S3."""
    s = settings()
    size, sha256 = _known.get(url, (None, None))
    if s.cache_dir and sha256 and size is not None:
        return ShardCache(s.cache_dir, s.cache_bytes).open(url, size, sha256)
    return io.BufferedReader(S3Stream(url), buffer_size=BUFFER)


# ---------------------------------------------------------------- cache


class ShardCache:
    """A folder of shards named `<sha256>.tar`, least recently used (by mtime) evicted past `limit` bytes.

    Content-addressed, so a shard rewritten under the same name is a different entry, and a cached copy is
    checked against its name (the manifest's sha256) every time before it is used.
    """

    STALE_SECONDS = 600  # a temporary file untouched this long was left by a killed process

    def __init__(self, directory: str, limit: int) -> None:
        self.directory, self.limit = directory, int(limit)
        os.makedirs(directory, exist_ok=True)

    def path(self, sha256: str) -> str:
        """`<sha256>.tar` in the cache folder; the digest comes from a manifest, so it is checked to be one
        (anything else could name a file outside the folder, which a failed check would then delete)."""
        if not is_sha256(sha256):
            raise ShardError(f"{self.directory}: {sha256!r} is not a sha256 digest; refusing it as a cache name")
        return os.path.join(self.directory, f"{sha256}.tar")

    def open(self, url: str, size: int, sha256: str) -> BinaryIO:
        cached = self._verified(url, size, sha256)
        if cached is not None:
            stats["cache_hits"] += 1
            return cached
        stats["cache_misses"] += 1
        if size > self.limit:
            return io.BufferedReader(S3Stream(url), buffer_size=BUFFER)
        self.make_room(size)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".tmp", dir=self.directory)
        return io.BufferedReader(_Fill(S3Stream(url), os.fdopen(fd, "wb"), tmp, self, size, sha256),
                                 buffer_size=BUFFER)

    def _verified(self, url: str, size: int, sha256: str) -> Optional[BinaryIO]:
        path = self.path(sha256)
        try:
            f = open(path, "rb", buffering=BUFFER)
        except FileNotFoundError:
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: f.read(BUFFER), b""):
            digest.update(block)
        if f.tell() == size and digest.hexdigest() == sha256:
            f.seek(0)
            try:
                os.utime(path)  # most recently used
            except FileNotFoundError:  # evicted by another process meanwhile; our open handle still reads it
                pass
            return f
        f.close()
        stats["cache_corrupt"] += 1
        log.warning("%s: cached copy %s is corrupt (size or sha256 differs from the manifest); fetching it again",
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


# ---------------------------------------------------------------- writing


class S3Output:
    """The writer's output folder at an S3 prefix (see writer._LocalOutput for the local one).

    S3 has no rename, and needs none: an object appears whole when its PUT (or the completion of its
    multipart upload) succeeds, never partly written. What a killed run can leave is an unfinished
    multipart upload, invisible to readers; `prepare(clean_temporaries=True)` aborts those.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.bucket, key = split_url(url)
        self.prefix = key.rstrip("/") + "/" if key.strip("/") else ""

    def _url(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{name}"

    def prepare(self, clean_temporaries: bool) -> None:
        try:
            client().head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise SpgError(f"{self.url}: bucket {self.bucket!r} does not exist (NoSuchBucket)") from None
            raise error(self.url, exc) from None
        if clean_temporaries:
            self._abort_unfinished_uploads()

    def _abort_unfinished_uploads(self) -> None:
        c = client()
        try:
            pages = c.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    c.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:
            raise error(self.url, exc, doing="cleaning unfinished uploads") from None

    def read(self, name: str) -> Optional[bytes]:
        return read_bytes(self._url(name), missing_ok=True)

    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> None:
        """One object of `parts` joined, multipart above `multipart_threshold`; a shard also carries its
        sha256 as metadata."""
        from boto3.s3.transfer import TransferConfig

        s = settings()
        transfer = TransferConfig(multipart_threshold=s.multipart_threshold, multipart_chunksize=s.multipart_chunksize,
                                  max_concurrency=s.max_concurrency)
        extra: Dict[str, Any] = {"Metadata": {"sha256": sha256}} if sha256 else {}
        try:
            client(s).upload_fileobj(io.BytesIO(b"".join(parts)), self.bucket, self.prefix + name, ExtraArgs=extra,
                                     Config=transfer)
        except Exception as exc:
            raise error(self._url(name), exc, doing="upload failed") from None

    def matches(self, name: str, size: int, sha256: str) -> bool:
        """Whether the object is there with this size and the sha256 stored when it was uploaded."""
        try:
            head = client().head_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            if _code(exc) in _MISSING:
                return False
            raise error(self._url(name), exc) from None
        return head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == sha256

    def names(self, folder: str = "") -> List[str]:
        """Object names directly under the prefix (or under its `folder`)."""
        prefix = self.prefix + (folder.strip("/") + "/" if folder else "")
        try:
            pages = client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                       Delimiter="/")
            return [o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])]
        except Exception as exc:
            raise error(self._url(folder), exc) from None

    def remove(self, name: str) -> None:
        try:
            client().delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            raise error(self._url(name), exc, doing="delete failed") from None


# ---------------------------------------------------------------- webdataset


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """webdataset.gopen handler: `wds.WebDataset("s3://bucket/shard-{000000..000009}.tar")` streams through
    open_shard (resuming, cached); `wds.TarWriter("s3://...")` uploads when the writer is closed."""
    if mode == "rb":
        return open_shard(url)
    if mode == "wb":
        return _UploadOnClose(url)
    raise ValueError(f"{url}: mode {mode!r} not supported for s3://")


class _UploadOnClose(io.BytesIO):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def close(self) -> None:
        if not self.closed:
            bucket, key = split_url(self.url)
            S3Output(f"{SCHEME}{bucket}").write(key, self.getvalue())
        super().close()


def _register_with_webdataset() -> None:
    import importlib

    try:
        gopen = importlib.import_module("webdataset.gopen")  # the module; `webdataset.gopen` is also a function
    except ImportError:  # pragma: no cover - webdataset is a dependency
        return
    gopen.gopen_schemes.setdefault("s3", _gopen_s3)


_register_with_webdataset()

