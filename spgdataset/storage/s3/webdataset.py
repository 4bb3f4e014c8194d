"""webdataset's gopen for s3:// URLs, through the same streams: `register_with_webdataset()` makes
`wds.WebDataset("s3://bucket/shard-{000000..000009}.tar")` stream through `shard_stream` (resuming) and
`wds.TarWriter("s3://...")` upload when the writer is closed. webdataset names a URL, not a storage object, so
the settings are read (configure() over the environment) when it opens one."""

from __future__ import annotations

import importlib
import io
from typing import Any, BinaryIO

from .cache import shard_stream
from .prefix import S3Storage
from .settings import settings
from .urls import SCHEME, split_url


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> BinaryIO:
    """webdataset.gopen handler: `wds.WebDataset("s3://bucket/shard-{000000..000009}.tar")` streams through
    shard_stream (resuming); `wds.TarWriter("s3://...")` uploads when the writer is closed."""
    if mode == "rb":
        return shard_stream(url, settings())
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
            S3Storage(f"{SCHEME}{bucket}", settings()).write(key, self.getvalue())
        super().close()


def register_with_webdataset() -> None:
    """Add the "s3" handler to webdataset's gopen table (unless one is there already)."""
    try:
        gopen = importlib.import_module("webdataset.gopen")  # the module; `webdataset.gopen` is also a function
    except ImportError:  # pragma: no cover - webdataset is a dependency
        return
    gopen.gopen_schemes.setdefault("s3", _gopen_s3)
