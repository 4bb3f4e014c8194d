"""`s3://bucket/prefix` for reading and writing shards, through boto3 (`pip install "spgdataset[s3]"`).

settings.py  S3Settings, configure() and the environment
client.py    one boto3 client per process and settings; S3 errors as one-line messages naming the URL
stream.py    GetObject as a stream that resumes (Range + If-Match) after a broken connection
cache.py     an optional local shard cache (content-addressed, LRU); open_shard()
output.py    the writer's output folder at a prefix (multipart uploads, sha256 as object metadata)
lock.py      a writer's lock on a prefix: a lease made with conditional writes
webdataset.py  webdataset's gopen handler for s3://, added by register_with_webdataset()
"""

from __future__ import annotations

from .cache import ShardCache, open_shard
from .client import backoff, client, error, forget_clients, is_transient, stats
from .output import S3Output
from .settings import S3Settings, adopt, clear, configure, overrides, parse_size, settings
from .stream import S3Stream, prefix_exists, read_bytes
from .urls import SCHEME, is_s3_url, split_url
from .webdataset import register_with_webdataset


def reset() -> None:
    """Forget configure() settings, clients and counters (tests)."""
    clear()
    forget_clients()


__all__ = ["S3Output", "S3Settings", "S3Stream", "SCHEME", "ShardCache", "adopt", "backoff", "client", "configure",
           "error", "is_s3_url", "is_transient", "open_shard", "overrides", "parse_size", "prefix_exists",
           "read_bytes", "register_with_webdataset", "reset", "settings", "split_url", "stats"]
