"""The writer's output folder at an S3 prefix (storage.local.LocalOutput is the local one)."""

from __future__ import annotations

import io
from typing import Any, Dict, List, Optional

from ...errors import SpgError
from .client import MISSING_CODES, client, error, error_code
from .settings import settings
from .stream import read_bytes
from .urls import SCHEME, split_url


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
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
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
            if error_code(exc) in MISSING_CODES:
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
