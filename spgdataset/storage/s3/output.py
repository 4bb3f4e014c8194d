"""The writer's output folder at an S3 prefix (storage.local.LocalOutput is the local one)."""

from __future__ import annotations

import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from ...errors import SpgError
from . import lock as lease_lock
from .client import MISSING_CODES, client, error, error_code
from .settings import settings
from .stream import read_bytes
from .urls import SCHEME, split_url

# Requests in flight at once for many small objects (state records, HEADs of records without stamps).
PARALLEL_REQUESTS = 16
# An object being written stays in memory up to this size, then spills to a temporary file.
SPOOL_BYTES = 64 * 2**20


class S3Output:
    """The writer's output folder at an S3 prefix.

    S3 has no rename, and needs none: an object appears whole when its PUT (or the completion of its
    multipart upload) succeeds, never partly written. What a killed run can leave is an unfinished
    multipart upload, invisible to readers; `clean()` aborts those of the run's own names.
    A stamp is "size:ETag": a listing gives it for 1,000 objects per request, so a rerun checks thousands of
    shards against their state records without a request per shard.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.bucket, key = split_url(url)
        self.prefix = key.rstrip("/") + "/" if key.strip("/") else ""

    def url_of(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{name}"

    def prepare(self) -> None:
        try:
            client().head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise SpgError(f"{self.url}: bucket {self.bucket!r} does not exist (NoSuchBucket)") from None
            raise error(self.url, exc) from None

    def clean(self, owned: Callable[[str], bool]) -> None:
        """Abort the unfinished multipart uploads of names `owned` says are this run's, directly under the
        prefix or in its state folder (never another part's, nor anything deeper under the prefix)."""
        c = client()
        try:
            pages = c.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(self.prefix):]
                    if name.count("/") <= 1 and owned(name):
                        c.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:
            raise error(self.url, exc, doing="cleaning unfinished uploads") from None

    def read(self, name: str) -> Optional[bytes]:
        return read_bytes(self.url_of(name), missing_ok=True)

    def read_many(self, names: Iterable[str]) -> Dict[str, Optional[bytes]]:
        """Small objects, several requests in flight (thousands of state records one by one took seconds)."""
        names = list(names)
        with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
            return dict(zip(names, pool.map(self.read, names)))

    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> str:
        """A small object (a state record, the manifest, the index) in one PUT."""
        return self.put(name, b"".join(parts), sha256)

    def put(self, name: str, body: Any, sha256: Optional[str] = None) -> str:
        """One PUT (objects up to 5 GiB); its stamp, from the response (no HEAD needed)."""
        extra: Dict[str, Any] = {"Metadata": {"sha256": sha256}} if sha256 else {}
        try:
            response = client().put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body, **extra)
        except Exception as exc:
            raise error(self.url_of(name), exc, doing="upload failed") from None
        return f"{len(body)}:{response['ETag']}"

    def create(self, name: str) -> "S3Object":
        return S3Object(self, name)

    def listing(self, folder: str = "") -> Dict[str, str]:
        """{name: stamp} of the objects directly under the prefix (or under its `folder`)."""
        prefix = self.prefix + (folder.strip("/") + "/" if folder else "")
        try:
            pages = client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                       Delimiter="/")
            return {o["Key"][len(prefix):]: f"{o['Size']}:{o['ETag']}" for page in pages for o in page.get("Contents", [])}
        except Exception as exc:
            raise error(self.url_of(folder), exc) from None

    def entries(self, folder: str = "") -> Dict[str, Tuple[str, str]]:
        """{name: (kind, stamp)} directly under the prefix (or its `folder`): objects are "file" with their stamp,
        deeper prefixes "folder"."""
        prefix = self.prefix + (folder.strip("/") + "/" if folder else "")
        try:
            pages = client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                       Delimiter="/")
            found: Dict[str, str] = {}
            for page in pages:
                found.update({o["Key"][len(prefix):]: ("file", f"{o['Size']}:{o['ETag']}")
                              for o in page.get("Contents", [])})
                found.update({p["Prefix"][len(prefix):].rstrip("/"): ("folder", "")
                              for p in page.get("CommonPrefixes", [])})
            return found
        except Exception as exc:
            raise error(self.url_of(folder), exc) from None

    def read_head(self, name: str, size: int) -> Optional[bytes]:
        """The first `size` bytes of an object (a range request); None when it is missing."""
        try:
            response = client().get_object(Bucket=self.bucket, Key=self.prefix + name, Range=f"bytes=0-{size - 1}")
            return response["Body"].read(size)
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            if error_code(exc) == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise error(self.url_of(name), exc) from None

    def try_lock(self, name: str, holder: bytes, shared: bool = False) -> Any:
        """A lease on the object `name` (storage/s3/lock.py), or None while a living run holds it. S3 has no shared
        locks: a shared one only checks that nobody holds `name` (the parts of a split run write side by side)."""
        if shared:
            return _Unheld() if self.lock_holder(name) is None else None
        return lease_lock.acquire(self.bucket, self.prefix + name, holder)

    def lock_holder(self, name: str) -> Optional[bytes]:
        """What the holder of a living lease `name` wrote of itself (with its age); None when nobody holds it."""
        found = lease_lock.lease(self.bucket, self.prefix + name)
        if found is None or found[1] >= settings().lock_lease:
            return None
        try:
            holder = json.loads(self.read(name) or b"{}")
        except ValueError:
            holder = {}
        holder = holder if isinstance(holder, dict) else {}
        return json.dumps(dict(holder, renewed=f"{found[1]:.0f} s ago")).encode()

    def stamp(self, name: str) -> Optional[str]:
        """The object's stamp from a HEAD; None when it is missing."""
        head = self._head(name)
        return None if head is None else f"{head['ContentLength']}:{head['ETag']}"

    def matches(self, name: str, size: int, sha256: str) -> bool:
        """For state records written before stamps: the object is there with this size and the sha256 stored
        when it was uploaded."""
        head = self._head(name)
        return head is not None and head["ContentLength"] == size and head.get("Metadata", {}).get("sha256") == sha256

    def _head(self, name: str) -> Optional[Dict[str, Any]]:
        try:
            return client().head_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise error(self.url_of(name), exc) from None

    def remove(self, name: str) -> None:
        try:
            client().delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            raise error(self.url_of(name), exc, doing="delete failed") from None


class _Unheld:
    """A shared lock on S3, which holds nothing (see S3Output.try_lock)."""

    lost = False

    def release(self) -> None:
        pass


class S3Object:
    """One object of an S3Output being written: pieces gathered in memory (on disk past SPOOL_BYTES), one
    upload at commit (multipart above `multipart_threshold`), the shard's sha256 stored as metadata."""

    def __init__(self, output: S3Output, name: str) -> None:
        self.output, self.name = output, name
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def write(self, data: Any) -> None:
        self.spool.write(data)

    def commit(self, sha256: Optional[str] = None) -> str:
        """Uploaded; its stamp. Below `multipart_threshold` one PUT, whose response has the ETag; above it
        boto3's parallel multipart upload, which does not return it, so a HEAD asks."""
        from boto3.s3.transfer import TransferConfig

        s, out = settings(), self.output
        try:
            size = self.spool.tell()
            self.spool.seek(0)
            if size < s.multipart_threshold:
                return out.put(self.name, self.spool.read(), sha256)
            transfer = TransferConfig(multipart_threshold=s.multipart_threshold,
                                      multipart_chunksize=s.multipart_chunksize, max_concurrency=s.max_concurrency)
            extra: Dict[str, Any] = {"Metadata": {"sha256": sha256}} if sha256 else {}
            try:
                client(s).upload_fileobj(self.spool, out.bucket, out.prefix + self.name, ExtraArgs=extra,
                                         Config=transfer)
            except Exception as exc:
                raise error(out.url_of(self.name), exc, doing="upload failed") from None
        finally:
            self.spool.close()
        stamp = out.stamp(self.name)
        if stamp is None:
            raise SpgError(f"{out.url_of(self.name)}: upload failed: the object is not there after its upload")
        return stamp

    def discard(self) -> None:
        self.spool.close()
