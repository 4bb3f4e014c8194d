"""s3:// addresses."""

from __future__ import annotations

from typing import Any, Tuple

from ...errors import SpgError

SCHEME = "s3://"


def is_s3_url(path: Any) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def split_url(url: str) -> Tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not is_s3_url(url) or not bucket:
        raise SpgError(f"{url}: not an s3://bucket/key URL")
    return bucket, key
