"""Where shards live: a local folder or an `s3://bucket/prefix`, behind one small surface.

Reading: `read_bytes` (manifest, index), `open_shard` (a shard as a stream), `folder_exists`.
Writing: `output_for(url)` gives an `Output` (LocalOutput or S3Output) with the same methods.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable, Dict, Iterable, Optional, Protocol, Tuple

from ..errors import ShardError, SpgError
from . import s3
from .local import LocalOutput, open_regular, read_at_most
from .s3 import is_s3_url


class Writing(Protocol):
    """One name being written: nobody sees it until `commit`, which returns its stamp."""

    def write(self, data: Any) -> None: ...
    def commit(self, sha256: Optional[str] = None) -> str: ...
    def discard(self) -> None: ...


class Held(Protocol):
    """A writer's lock (`Output.try_lock`); `lost` when another run took it over (an S3 lease run out)."""

    lost: bool

    def release(self) -> None: ...


class Output(Protocol):
    """An output folder where every name is either absent or whole.

    A stamp ("size:mtime" of a file, "size:ETag" of an object) identifies one version of a name; `listing`
    gives the stamps of a whole folder at once, so a rerun checks its shards without reading them. `entries`
    says what else is there (folders, links), so a writer can tell a folder holding someone else's files.
    """

    def prepare(self) -> None: ...
    def clean(self, owned: Callable[[str], bool]) -> None: ...
    def read(self, name: str) -> Optional[bytes]: ...
    def read_many(self, names: Iterable[str]) -> Dict[str, Optional[bytes]]: ...
    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> str: ...
    def create(self, name: str) -> Writing: ...
    def listing(self, folder: str = "") -> Dict[str, str]: ...
    def entries(self, folder: str = "") -> Dict[str, Tuple[str, str]]: ...
    def read_head(self, name: str, size: int) -> Optional[bytes]: ...
    def try_lock(self, name: str, holder: bytes, shared: bool = False) -> Optional[Held]: ...
    def lock_holder(self, name: str) -> Optional[bytes]: ...
    def matches(self, name: str, size: int, sha256: str) -> bool: ...
    def remove(self, name: str) -> None: ...


def output_for(url: str) -> Output:
    return s3.S3Output(url) if is_s3_url(url) else LocalOutput(url)


def read_bytes(path: str, limit: int, missing_ok: bool = False, what: str = "cannot read") -> Optional[bytes]:
    """The bytes of a local file or an s3:// object, at most `limit` + 1 of them (more than `limit`: the
    caller tells the source is too large, without reading it whole); None when missing and `missing_ok`."""
    if is_s3_url(path):
        return s3.read_bytes(path, missing_ok=missing_ok, limit=limit)
    try:
        with open_regular(path) as f:
            return read_at_most(f, limit)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise SpgError(f"{path}: {what}: no such file") from None
    except OSError as exc:
        raise SpgError(f"{path}: {what}: {exc.strerror or exc}") from None


def folder_exists(root: str) -> bool:
    return s3.prefix_exists(root) if is_s3_url(root) else os.path.isdir(root)


def open_shard(url: str, size: Optional[int] = None, sha256: Optional[str] = None) -> BinaryIO:
    """A binary stream over one shard: a local regular file, or an S3 object streamed (resuming, cached when
    a cache is configured and the manifest's size and sha256 are given)."""
    if is_s3_url(url):
        return s3.open_shard(url, size, sha256)
    try:
        return open_regular(url, buffering=1 << 20)
    except OSError as exc:
        raise ShardError(f"{url}: cannot open shard: {exc.strerror or exc}") from None
