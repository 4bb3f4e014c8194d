"""boto3 clients (one per process and settings) and S3 errors as one-line SpgErrors naming the URL.

Why boto3 rather than fsspec/s3fs: it is AWS's own maintained client; it finds credentials through the
standard chain (AWS_ACCESS_KEY_ID/..., AWS_PROFILE and ~/.aws, SSO, container and instance roles) and the
region as the aws CLI does; it takes an explicit endpoint for S3-compatible stores (MinIO, Ceph, R2, ...);
its retries are a documented config (`standard` mode); and its transfer manager does parallel multipart
uploads. s3fs would add fsspec and aiobotocore (an async fork of botocore pinned to exact botocore versions)
for the same few requests. boto3 is imported only when an s3:// URL is used (`pip install "spgdataset[s3]"`).

Every function takes the settings as a value (a storage object's, storage.at): nothing here reads configure()
or the environment. A client is never used across a fork (DataLoader workers): clients are keyed by
os.getpid() and the settings they were made with, so a forked child makes its own; no lock is held while one is
made (a lock held by another thread at a fork would deadlock the child).
"""

from __future__ import annotations

import collections
import os
import random
import re
from typing import Any, Dict, Optional, Tuple, Type

from ... import errors
from ...errors import ShardError, SpgError
from .settings import S3Settings
from .urls import is_s3_url, split_url

# Counters of this process (tests, benchmarks, debugging): resumed streams, cache hits/misses/evictions...
stats: "collections.Counter[str]" = collections.Counter()
_clients: Dict[Tuple[Any, ...], Any] = {}


def forget_clients() -> None:
    """Drop this process's clients and counters (tests; clients hold the credentials they were made with)."""
    _clients.clear()
    stats.clear()


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise SpgError('s3:// URLs need boto3: pip install "spgdataset[s3]"') from None
    return boto3


def client(s: S3Settings, attempts: Optional[int] = None) -> Any:
    """The boto3 S3 client of this process for these settings (created on first use). `attempts`: botocore's
    total attempts per request (default `api_attempts`; streams use 1 and retry themselves)."""
    attempts = s.api_attempts if attempts is None else attempts
    key = (os.getpid(), s.endpoint_url, s.region_name, s.profile_name, s.addressing_style, s.connect_timeout,
           s.read_timeout, attempts)
    found = _clients.get(key)
    if found is None:  # two threads may both make one: the first one stored is kept
        found = _clients.setdefault(key, _new_client(s, attempts))
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
MISSING_CODES = ("NoSuchKey", "404", "NotFound")
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
                    "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException",
                    "InternalError", "ServiceUnavailable", "BandwidthLimitExceeded", "500", "502", "503", "504"}


def error_code(exc: BaseException) -> Optional[str]:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def is_transient(exc: BaseException) -> bool:
    """Worth another try: broken connections, timeouts, incomplete bodies, 5xx, throttling."""
    import http.client

    from botocore import exceptions as bex
    from urllib3 import exceptions as u3

    if isinstance(exc, bex.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_code(exc) in _TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, (bex.ConnectionError, bex.HTTPClientError, bex.IncompleteReadError, u3.ProtocolError,
                            u3.TimeoutError, http.client.IncompleteRead, ConnectionError, TimeoutError,
                            EarlyEnd))


class S3Error(SpgError):
    """An SpgError from S3, with S3's error code (NoSuchKey, AccessDenied, ...) when it gave one."""

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code


class S3ShardError(S3Error, ShardError):
    """The same about a shard: a ShardError, which a dataset may skip (on_error="warn")."""


def error(s: S3Settings, url: str, exc: BaseException, cls: Type[SpgError] = SpgError, doing: str = "") -> SpgError:
    """An SpgError (a ShardError when `cls` is one) naming the URL (and the endpoint of `s`) and saying what went
    wrong, in one line, with the S3 error code when there is one (S3Error.code)."""
    from botocore import exceptions as bex

    if isinstance(exc, SpgError):
        return exc
    endpoint = s.endpoint_url
    head = f"{url}: {doing + ': ' if doing else ''}"
    code = error_code(exc) or _upload_error_code(exc)
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        text = ("no AWS credentials found (looked at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE and "
                "~/.aws, SSO, container and instance roles)")
    elif code is not None:
        explained = _EXPLAINED.get(code)
        bucket = split_url(url)[0] if is_s3_url(url) else ""
        text = explained.format(bucket=bucket) if explained else (_message(exc) or "request failed")
        text += f" ({code}{', endpoint ' + endpoint if endpoint else ''})"
    else:
        text = f"{type(exc).__name__}: {first_line(exc, s)}{' (endpoint ' + endpoint + ')' if endpoint else ''}"
    return (S3ShardError if issubclass(cls, ShardError) else S3Error)(head + text, code)


def _upload_error_code(exc: BaseException) -> Optional[str]:
    """boto3's S3UploadFailedError carries the ClientError only in its text."""
    match = re.search(r"An error occurred \(([A-Za-z0-9]+)\)", str(exc))
    return match.group(1) if match and type(exc).__name__ == "S3UploadFailedError" else None


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Message", "") if isinstance(response, dict) else ""


def first_line(exc: BaseException, s: S3Settings) -> str:
    """errors.first_line, saying what a read timeout means (botocore's text names no URL)."""
    if type(exc).__name__ == "ReadTimeoutError":
        return f"no data for {s.read_timeout:g} s (read timeout)"
    return errors.first_line(exc)


class EarlyEnd(Exception):
    """The body ended before the object's last byte without an error from the HTTP layer."""


def backoff(failures: int, s: S3Settings) -> float:
    """Seconds to wait after the n-th consecutive failure: exponential, capped, with equal jitter."""
    ceiling = min(s.retry_max_delay, s.retry_base_delay * 2 ** (failures - 1))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


_jitter = random.Random()  # private: never consume the global generator that seeded code may rely on
