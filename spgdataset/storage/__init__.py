"""Where shards live: a local folder or an `s3://bucket/prefix`, as one object with one surface.

`at(url)` builds it (LocalStorage, storage/folder.py; S3Storage, storage/s3/prefix.py). A dataset reads its shard
set through it (`read_bytes`, `read_checked`, `open_shard`, `exists`; `read_range`: one file of a shard;
`will_read`: a shard read next, which a local folder asks the kernel to read ahead); a run
writes its output through it (`create`/`commit`, `listing`, a writer's lock). An S3 storage holds its S3Settings
as a value, read once when it is built: a pickled copy (a dataset in a spawned worker, a shard task on Dask)
reaches S3 as its maker did.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Callable, Collection, Dict, Iterable, Optional, Protocol, Tuple

from ..errors import SpgError
from .folder import LocalStorage
from .s3.prefix import S3Storage
from .s3.settings import S3Settings, settings
from .s3.urls import SCHEME, is_s3_url


class Writing(Protocol):
    """One name being written: nobody sees it until `commit`, which returns its stamp."""

    def write(self, data: Any) -> None: ...
    def commit(self, sha256: Optional[str] = None) -> str: ...
    def discard(self) -> None: ...


class Held(Protocol):
    """A writer's lock (`Storage.try_lock`); `lost` when another run took it over (an S3 lease run out)."""

    lost: bool

    def release(self) -> None: ...


class Storage(Protocol):
    """A folder of shards where every name is either absent or whole; names are relative to `root`.

    Reading takes at most a limit (+ 1 byte, so that the caller tells a source larger than it should be) and never
    blocks on what is not a regular file. A stamp ("size:mtime" of a file, "size:ETag" of an object) identifies one
    version of a name; `listing` gives the stamps of a whole folder at once, so a rerun checks its shards without
    reading them. `entries` says what else is there (folders, links), so a writer can tell a folder holding
    someone else's files.
    """

    root: str
    local: bool  # reads wait on a disk, not a network: the kernel reads ahead what `will_read` names

    def url(self, name: str) -> str: ...
    def will_read(self, name: str) -> None: ...
    def exists(self) -> bool: ...
    def read_bytes(self, name: str, limit: int, missing_ok: bool = False,
                   what: str = "cannot read") -> Optional[bytes]: ...
    def read_checked(self, name: str, limit: int, check: Callable[[int, str], None], what: str) -> Tuple[Any, Any]: ...
    def open_shard(self, name: str, size: Optional[int] = None, sha256: Optional[str] = None) -> BinaryIO: ...
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...
    def holds_files(self, extensions: Collection[str]) -> bool: ...
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


def at(url: str, s3_settings: Optional[S3Settings] = None) -> Storage:
    """The storage of a folder or an s3:// prefix. On S3 it keeps `s3_settings`, by default what applies now
    (`spgdataset.s3.configure()` over the environment): later configure() calls do not change it."""
    if is_s3_url(url):
        return S3Storage(url, s3_settings or settings())
    return LocalStorage(url)


def check_url(url: str) -> None:
    """`pathlib.Path("s3://b/x")` is "s3:/b/x": refused with that said, rather than taken as a local folder."""
    if url.startswith(SCHEME[:-1]) and not is_s3_url(url):
        raise SpgError(f"{url}: looks like an s3:// URL with one slash lost (pathlib.Path does that); "
                       "pass the URL as a str")


__all__ = ["Held", "LocalStorage", "S3Storage", "Storage", "Writing", "at", "check_url", "is_s3_url"]
