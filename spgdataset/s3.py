"""S3 for users: `spgdataset.s3.configure(endpoint_url=..., cache_dir=..., ...)`, the settings in effect, and
webdataset's s3:// scheme (the machinery is spgdataset/storage/s3/).

What configure() sets (over the environment: AWS_ENDPOINT_URL, SPG_S3_CACHE_DIR, ...) is taken by each dataset
and each spg-shard run when it is made, and travels with it into DataLoader workers and the writer's tasks.
"""

from __future__ import annotations

from .storage.s3.client import forget_clients, stats
from .storage.s3.settings import S3Settings, clear, configure, settings
from .storage.s3.webdataset import register_with_webdataset


def reset() -> None:
    """Forget configure() settings, this process's clients and its counters (tests: a client keeps the
    credentials it was made with)."""
    clear()
    forget_clients()


__all__ = ["S3Settings", "configure", "register_with_webdataset", "reset", "settings", "stats"]
