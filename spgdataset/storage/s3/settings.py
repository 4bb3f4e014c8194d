"""How to reach S3: settings from `configure(...)` in code, else from the environment.

Environment: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (endpoint of an S3-compatible store), SPG_S3_CACHE_DIR and
SPG_S3_CACHE_BYTES (local shard cache), SPG_S3_LOCK_LEASE (seconds a writer's lock outlives a killed run).
configure() and the environment are read once, where a storage object is built (`storage.at`): from then on the
settings are a value held by the object, which carries them into DataLoader workers and the writer's tasks
(forked, spawned or on Dask).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Dict, Optional

from ...errors import SpgError

MiB, GiB = 2**20, 2**30


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """How to reach S3. None means: what boto3 finds (environment, ~/.aws, instance role)."""

    endpoint_url: Optional[str] = None  # S3-compatible store; env AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL
    region_name: Optional[str] = None  # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    profile_name: Optional[str] = None  # None: AWS_PROFILE or the default profile
    addressing_style: Optional[str] = None  # None: "path" with a custom endpoint, else boto3's "auto"
    max_retries: int = 6  # consecutive failed attempts (no byte of progress) before a stream gives up
    give_up_after: float = 120.0  # seconds without a byte of progress before a stream gives up
    retry_base_delay: float = 0.25  # seconds before the first retry; doubles per failure, with jitter
    retry_max_delay: float = 10.0  # seconds, cap of one backoff
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 20.0  # seconds without a byte before a read counts as failed
    api_attempts: int = 4  # botocore `standard` retry mode: total attempts of one request
    multipart_threshold: int = 8 * MiB  # bytes: objects this large are uploaded in parts
    multipart_chunksize: int = 8 * MiB  # bytes per part (S3's minimum is 5 MiB, except the last part)
    max_concurrency: int = 4  # parts uploaded at once
    cache_dir: Optional[str] = None  # local shard cache; env SPG_S3_CACHE_DIR; None: no cache
    cache_bytes: int = 10 * GiB  # cache size limit in bytes; env SPG_S3_CACHE_BYTES (e.g. "50G")
    lock_lease: float = 60.0  # seconds: a writer's lock on a prefix not renewed for this long was a dead run's


_FIELDS = {f.name for f in dataclasses.fields(S3Settings)}
_overrides: Dict[str, Any] = {}


def configure(**changes: Any) -> S3Settings:
    """Set S3 settings for this process's datasets and runs made from now on; returns them all.

    `configure(endpoint_url="http://127.0.0.1:9000", cache_dir="/scratch/shards", cache_bytes=50 * 2**30)`.
    A value of None removes a setting made here, so the environment or the default applies again.
    """
    unknown = set(changes) - _FIELDS
    if unknown:
        raise TypeError(f"configure(): unknown setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    for name, value in changes.items():
        if value is None:
            _overrides.pop(name, None)
        else:
            _overrides[name] = parse_size(value) if name == "cache_bytes" else value
    return settings()


def clear() -> None:
    """Forget what configure() set (tests)."""
    _overrides.clear()


def settings() -> S3Settings:
    """What applies now: configure()'s settings over the environment's over the defaults."""
    env: Dict[str, Any] = {}
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            env["endpoint_url"] = endpoint
    if os.environ.get("SPG_S3_CACHE_DIR"):
        env["cache_dir"] = os.environ["SPG_S3_CACHE_DIR"]
    if os.environ.get("SPG_S3_CACHE_BYTES"):
        env["cache_bytes"] = parse_size(os.environ["SPG_S3_CACHE_BYTES"])
    if os.environ.get("SPG_S3_LOCK_LEASE"):
        env["lock_lease"] = _seconds(os.environ["SPG_S3_LOCK_LEASE"], "SPG_S3_LOCK_LEASE")
    return S3Settings(**{**env, **_overrides})


def _seconds(value: str, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 1 <= seconds <= 86400:
        raise SpgError(f"{name}={value!r}: expected seconds from 1 to 86400")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from 123, "123", "512M", "50G", "1.5TiB" (binary units)."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if not match:
        raise SpgError(f"cache size {value!r}: expected bytes, or a number with K, M, G or T")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))
