"""A writer's lock on an S3 prefix, which has no flock: a lease.

The lock is an object made only where none is (`If-None-Match: *`). Its holder renews it every quarter of
`lock_lease` seconds (`If-Match:` its own ETag); one not renewed for a whole lease belongs to a run that died,
and the next run takes it over (`If-Match:` the stale ETag, so two newcomers cannot both win). Ages are the
server's (an object's LastModified against the Date of the response), so the machines' clocks do not matter.
A holder whose lease was taken over (frozen for a whole lease) sees `lost` and must not finish its run.
This needs S3's conditional writes (AWS since 2024, MinIO, moto); a store that ignores them gets no lock.
"""

from __future__ import annotations

import email.utils
import logging
import threading
from typing import Any, Optional, Tuple

from .client import MISSING_CODES, client, error, error_code
from .settings import S3Settings

log = logging.getLogger("spgdataset")
CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


class S3Lock:
    """A lease held on `key` of `bucket` (see the module docstring), renewed in a thread until `release`."""

    def __init__(self, bucket: str, key: str, etag: str, body: bytes, s: S3Settings) -> None:
        self.bucket, self.key, self.etag, self.body, self.settings = bucket, key, etag, body, s
        self.lost = False
        self.period = s.lock_lease / 4
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="spg-s3-lock", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.etag = client(self.settings).put_object(Bucket=self.bucket, Key=self.key, Body=self.body,
                                                IfMatch=self.etag)["ETag"]
            except Exception as exc:
                if error_code(exc) in CONFLICT_CODES or error_code(exc) in MISSING_CODES:
                    self.lost = True
                    log.error("s3://%s/%s: another run took this writer's lock over", self.bucket, self.key)
                    return
                log.warning("s3://%s/%s: renewing the writer's lock failed (%s); trying again", self.bucket,
                            self.key, exc)

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if not self.lost:
            try:
                client(self.settings).delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except Exception:  # a lock left behind expires after one lease
                log.info("s3://%s/%s: could not remove the writer's lock; it expires by itself", self.bucket, self.key)


def acquire(bucket: str, key: str, body: bytes, s: S3Settings) -> Optional[S3Lock]:
    """The lock on `key`, or None while a living run holds it."""
    url = f"s3://{bucket}/{key}"
    c = client(s)
    try:
        return S3Lock(bucket, key, c.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"], body, s)
    except Exception as exc:
        if error_code(exc) not in CONFLICT_CODES:
            raise error(s, url, exc, doing="cannot take the writer's lock") from None
    found = lease(bucket, key, s)
    if found is None or found[1] < s.lock_lease:
        return None  # alive (or released a moment ago: the caller tries again)
    try:  # the holder died: take its lock over, unless another newcomer did first
        return S3Lock(bucket, key, c.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=found[0])["ETag"], body, s)
    except Exception as exc:
        if error_code(exc) in CONFLICT_CODES or error_code(exc) in MISSING_CODES:
            return None
        raise error(s, url, exc, doing="cannot take the writer's lock") from None


def lease(bucket: str, key: str, s: S3Settings) -> Optional[Tuple[str, float]]:
    """(ETag, seconds since it was last renewed, by the server's clock) of a lock object; None when absent."""
    try:
        head = client(s).head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if error_code(exc) in MISSING_CODES:
            return None
        raise error(s, f"s3://{bucket}/{key}", exc) from None
    return head["ETag"], _age(head)


def _age(head: Any) -> float:
    date = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not date:
        return 0.0  # no server time: never take the lock as a dead run's
    return (email.utils.parsedate_to_datetime(date) - head["LastModified"]).total_seconds()
