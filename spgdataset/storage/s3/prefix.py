"""The storage at an S3 prefix (storage/folder.py's LocalStorage is the local one): a shard set read from it,
the writer's output folder written to it. It holds its S3Settings as a value, so a pickled copy (a dataset in a
spawned DataLoader worker, a shard task on Dask) reaches S3 exactly as the process that built it did.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, Optional, Tuple

from ...errors import SpgError
from . import lock as lease_lock
from .cache import shard_stream
from .client import MISSING_CODES, client, error, error_code
from .settings import S3Settings
from .stream import read_object, read_range
from .urls import SCHEME, split_url

# Requests in flight at once for many small objects (state records, HEADs of records without stamps).
PARALLEL_REQUESTS = 16
# An object being written stays in memory up to this size, then spills to a temporary file.
SPOOL_BYTES = 64 * 2**20


class S3Storage:
    """A shard folder at an S3 prefix: read by a dataset, written by a run (the `Storage` protocol, storage/).

    S3 has no rename, and needs none: an object appears whole when its PUT (or the completion of its
    multipart upload) succeeds, never partly written. What a killed run can leave is an unfinished
    multipart upload, invisible to readers; `clean()` aborts those of the run's own names.
    A stamp is "size:ETag": a listing gives it for 1,000 objects per request, so a rerun checks thousands of
    shards against their state records without a request per shard.
    """

    local = False  # the reader reads the next shard in a thread of its own, while this one is used

    def __init__(self, root: str, settings: S3Settings) -> None:
        self.root, self.settings = root, settings
        self.bucket, key = split_url(root)
        self.prefix = key.rstrip("/") + "/" if key.strip("/") else ""

    def url(self, name: str) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}{name}"

    def will_read(self, name: str) -> None:
        """Nothing: an object is read ahead by the reader's thread (stages.slot_chunks)."""

    def exists(self) -> bool:
        """Whether any object lies under the prefix."""
        try:
            response = client(self.settings).list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise error(self.settings, self.root, exc) from None
        return bool(response.get("KeyCount"))

    def read_bytes(self, name: str, limit: int, missing_ok: bool = False, what: str = "cannot read") -> Optional[bytes]:
        """At most `limit` + 1 bytes of the object (more than `limit`: the caller says it is too large); None when
        it is missing and `missing_ok`. Errors say what S3 answered, which says more than `what`."""
        return read_object(self.url(name), self.settings, missing_ok=missing_ok, limit=limit)

    def read_checked(self, name: str, limit: int, check: Callable[[int, str], None], what: str) -> Tuple[bytes, None]:
        """The object's bytes (at most `limit` + 1), after `check(size, sha256)` let them pass; no identity (a
        memory map is only ever of a local file)."""
        data = read_object(self.url(name), self.settings, limit=limit) or b""  # never None: a missing object raised
        check(len(data), hashlib.sha256(data).hexdigest())
        return data, None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes of the object from byte `offset` (fewer where it ends): one range request, for one file
        of a shard (read/access.py); never from the shard cache, which holds whole shards."""
        return read_range(self.url(name), self.settings, offset, length)

    def open_shard(self, name: str, size: Optional[int] = None, sha256: Optional[str] = None) -> BinaryIO:
        """A stream over a shard, resuming after broken connections; from the cache when the settings have one
        and `size` and `sha256` (the manifest's) are given."""
        return shard_stream(self.url(name), self.settings, size, sha256)

    def holds_files(self, extensions: Collection[str]) -> bool:
        """Not looked for on S3 (a listing of a large prefix costs requests): a folder of audio given where shards
        were expected is told by the missing manifest's message alone."""
        return False

    def prepare(self) -> None:
        try:
            client(self.settings).head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise SpgError(f"{self.root}: bucket {self.bucket!r} does not exist (NoSuchBucket)") from None
            raise error(self.settings, self.root, exc) from None

    def clean(self, owned: Callable[[str], bool]) -> None:
        """Abort the unfinished multipart uploads of names `owned` says are this run's, directly under the
        prefix or in its state folder (never another part's, nor anything deeper under the prefix)."""
        c = client(self.settings)
        try:
            pages = c.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    name = upload["Key"][len(self.prefix):]
                    if name.count("/") <= 1 and owned(name):
                        c.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except Exception as exc:
            raise error(self.settings, self.root, exc, doing="cleaning unfinished uploads") from None

    def read(self, name: str) -> Optional[bytes]:
        return read_object(self.url(name), self.settings, missing_ok=True)

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
            response = client(self.settings).put_object(Bucket=self.bucket, Key=self.prefix + name, Body=body, **extra)
        except Exception as exc:
            raise error(self.settings, self.url(name), exc, doing="upload failed") from None
        return f"{len(body)}:{response['ETag']}"

    def create(self, name: str) -> "S3Object":
        return S3Object(self, name)

    def listing(self, folder: str = "") -> Dict[str, str]:
        """{name: stamp} of the objects directly under the prefix (or under its `folder`)."""
        return {name: stamp for name, (kind, stamp) in self.entries(folder).items() if kind == "file"}

    def entries(self, folder: str = "") -> Dict[str, Tuple[str, str]]:
        """{name: (kind, stamp)} directly under the prefix (or its `folder`): objects are "file" with their stamp,
        deeper prefixes "folder"."""
        prefix = self.prefix + (folder.strip("/") + "/" if folder else "")
        try:
            pages = client(self.settings).get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                                    Delimiter="/")
            found: Dict[str, Tuple[str, str]] = {}
            for page in pages:
                found.update({o["Key"][len(prefix):]: ("file", f"{o['Size']}:{o['ETag']}")
                              for o in page.get("Contents", [])})
                found.update({p["Prefix"][len(prefix):].rstrip("/"): ("folder", "")
                              for p in page.get("CommonPrefixes", [])})
            return found
        except Exception as exc:
            raise error(self.settings, self.url(folder), exc) from None

    def read_head(self, name: str, size: int) -> Optional[bytes]:
        """The first `size` bytes of an object (a range request); None when it is missing."""
        try:
            response = client(self.settings).get_object(Bucket=self.bucket, Key=self.prefix + name,
                                                        Range=f"bytes=0-{size - 1}")
            return response["Body"].read(size)
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            if error_code(exc) == "InvalidRange":  # an empty object has no byte 0
                return b""
            raise error(self.settings, self.url(name), exc) from None

    def try_lock(self, name: str, holder: bytes, shared: bool = False) -> Any:
        """A lease on the object `name` (storage/s3/lock.py), or None while a living run holds it. S3 has no shared
        locks: a shared one only checks that nobody holds `name` (the parts of a split run write side by side)."""
        if shared:
            return _Unheld() if self.lock_holder(name) is None else None
        return lease_lock.acquire(self.bucket, self.prefix + name, holder, self.settings)

    def lock_holder(self, name: str) -> Optional[bytes]:
        """What the holder of a living lease `name` wrote of itself (with its age); None when nobody holds it."""
        found = lease_lock.lease(self.bucket, self.prefix + name, self.settings)
        if found is None or found[1] >= self.settings.lock_lease:
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
            return client(self.settings).head_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            if error_code(exc) in MISSING_CODES:
                return None
            raise error(self.settings, self.url(name), exc) from None

    def remove(self, name: str) -> None:
        try:
            client(self.settings).delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except Exception as exc:
            raise error(self.settings, self.url(name), exc, doing="delete failed") from None


class _Unheld:
    """A shared lock on S3, which holds nothing (see S3Storage.try_lock)."""

    lost = False

    def release(self) -> None:
        pass


class S3Object:
    """One object of an S3Storage being written: pieces gathered in memory (on disk past SPOOL_BYTES), one
    upload at commit (multipart above `multipart_threshold`), the shard's sha256 stored as metadata."""

    def __init__(self, output: S3Storage, name: str) -> None:
        self.output, self.name = output, name
        self.spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def write(self, data: Any) -> None:
        self.spool.write(data)

    def commit(self, sha256: Optional[str] = None) -> str:
        """Uploaded; its stamp. Below `multipart_threshold` one PUT, whose response has the ETag; above it
        boto3's parallel multipart upload, which does not return it, so a HEAD asks."""
        from boto3.s3.transfer import TransferConfig

        out = self.output
        s = out.settings
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
                raise error(s, out.url(self.name), exc, doing="upload failed") from None
        finally:
            self.spool.close()
        stamp = out.stamp(self.name)
        if stamp is None:
            raise SpgError(f"{out.url(self.name)}: upload failed: the object is not there after its upload")
        return stamp

    def discard(self) -> None:
        self.spool.close()
