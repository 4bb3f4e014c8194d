"""Where shards come from: a shard folder, a manifest.json path, or a brace-expanded list of shard URLs,
on local disk or at `s3://bucket/prefix` (s3.py does the S3 part).

Everything a reader needs before opening a shard (shard list, file index, label vocabularies, feature
parameters, statistics) comes from manifest.json and index.msgpack beside the shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Union

import braceexpand

from . import s3
from .errors import ShardError, SpgError
from .shardformat import FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME, unpack

Source = Union[str, os.PathLike, Sequence[str]]


@dataclasses.dataclass
class ShardSet:
    """A manifest, its shards (possibly a selection of them) and the per-file index rows by shard name."""

    root: str
    manifest: Dict[str, Any]
    shards: List[Dict[str, Any]]
    files_by_shard: Dict[str, List[Dict[str, Any]]]
    s3_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)  # s3.configure() when opened

    def __post_init__(self) -> None:
        self._register()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """In a spawned DataLoader worker: bring along the S3 settings and the shards' digests (the cache
        checks cached copies against them)."""
        self.__dict__.update(state)
        s3.adopt(self.s3_settings)
        self._register()

    def _register(self) -> None:
        if s3.is_s3_url(self.root):
            for shard in self.shards:
                s3.register(self.url(shard), shard["bytes"], shard["sha256"])

    def url(self, shard: Dict[str, Any]) -> str:
        return os.path.join(self.root, shard["name"])


def open_source(source: Source) -> ShardSet:
    """Resolve `source` to a ShardSet; errors name the path and say what is missing."""
    selected: Optional[List[str]] = None
    if isinstance(source, (list, tuple)):
        urls = [u for s in source for u in braceexpand.braceexpand(os.fspath(s))]
        root, selected = _common_root(urls), [os.path.basename(u) for u in urls]
        manifest_path = os.path.join(root, MANIFEST_NAME)
    else:
        source = os.fspath(source)
        if source.startswith("s3:/") and not s3.is_s3_url(source):
            raise SpgError(f"{source}: looks like an s3:// URL with one slash lost (pathlib.Path does that); "
                           "pass the URL as a str")
        if "{" in source or source.endswith(".tar"):
            return open_source([source])
        if source.endswith(".json"):
            manifest_path, root = source, os.path.dirname(source) or "."
        else:
            root, manifest_path = source, os.path.join(source, MANIFEST_NAME)
    data = _read(manifest_path, missing_ok=True)
    if data is None:
        if _folder_exists(root):
            raise SpgError(f"{manifest_path}: not found; spg-shard writes it last, so the run that made {root} "
                           "did not finish (rerun it to complete) or this is not a shard folder")
        raise SpgError(f"{root}: no such shard folder")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as exc:
        raise SpgError(f"{manifest_path}: not a manifest ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SpgError(f"{manifest_path}: format version {manifest.get('format_version')!r}, "
                       f"this spgdataset reads {FORMAT_VERSION}")
    shards = manifest["shards"]
    if selected is not None:
        by_name = {s["name"]: s for s in shards}
        missing = [name for name in selected if name not in by_name]
        if missing:
            raise SpgError(f"{manifest_path}: does not list {', '.join(missing[:5])}")
        shards = [by_name[name] for name in selected]
    files_by_shard: Dict[str, List[Dict[str, Any]]] = {s["name"]: [] for s in shards}
    index_path = os.path.join(root, manifest.get("index", INDEX_NAME))
    rows = unpack(_read(index_path, what="cannot read the file index"))
    for row in rows:
        if row["shard"] in files_by_shard:
            files_by_shard[row["shard"]].append(row)
    return ShardSet(root, manifest, shards, files_by_shard, s3.overrides() if s3.is_s3_url(root) else {})


def _read(path: str, missing_ok: bool = False, what: str = "cannot read") -> Optional[bytes]:
    """The bytes of a local file or an s3:// object; None when missing and `missing_ok`."""
    if s3.is_s3_url(path):
        return s3.read_bytes(path, missing_ok=missing_ok)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise SpgError(f"{path}: {what}: no such file") from None
    except OSError as exc:
        raise SpgError(f"{path}: {what}: {exc.strerror or exc}") from None


def _folder_exists(root: str) -> bool:
    return s3.prefix_exists(root) if s3.is_s3_url(root) else os.path.isdir(root)


def _common_root(urls: List[str]) -> str:
    roots = {os.path.dirname(u) or "." for u in urls}
    if len(roots) != 1:
        raise SpgError(f"shard URLs must share one folder (with its manifest.json), got {sorted(roots)[:3]}")
    return roots.pop()


def open_shard(url: str) -> BinaryIO:
    """A binary stream over one shard: a local file, or an S3 object streamed (resuming, optionally cached)."""
    if s3.is_s3_url(url):
        return s3.open_shard(url)
    try:
        return open(url, "rb", buffering=1 << 20)
    except OSError as exc:
        raise ShardError(f"{url}: cannot open shard: {exc.strerror or exc}") from None
