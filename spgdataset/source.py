"""Where shards come from: a shard folder, a manifest.json path, or a brace-expanded list of shard URLs.

Everything a reader needs before opening a shard (shard list, file index, label vocabularies, feature
parameters, statistics) comes from manifest.json and index.msgpack beside the shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Union

import braceexpand

from .errors import ShardError, SpgError
from .shardformat import FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME, read_json, unpack

Source = Union[str, os.PathLike, Sequence[str]]


@dataclasses.dataclass
class ShardSet:
    """A manifest, its shards (possibly a selection of them) and the per-file index rows by shard name."""

    root: str
    manifest: Dict[str, Any]
    shards: List[Dict[str, Any]]
    files_by_shard: Dict[str, List[Dict[str, Any]]]

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
        if "{" in source or source.endswith(".tar"):
            return open_source([source])
        if source.endswith(".json"):
            manifest_path, root = source, os.path.dirname(source) or "."
        else:
            root, manifest_path = source, os.path.join(source, MANIFEST_NAME)
    if not os.path.exists(manifest_path):
        if os.path.isdir(root):
            raise SpgError(f"{manifest_path}: not found; spg-shard writes it last, so the run that made {root} "
                           "did not finish (rerun it to complete) or this is not a shard folder")
        raise SpgError(f"{root}: no such shard folder")
    manifest = read_json(manifest_path)
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
    try:
        with open(index_path, "rb") as f:
            rows = unpack(f.read())
    except OSError as exc:
        raise SpgError(f"{index_path}: cannot read the file index: {exc.strerror or exc}") from None
    for row in rows:
        if row["shard"] in files_by_shard:
            files_by_shard[row["shard"]].append(row)
    return ShardSet(root, manifest, shards, files_by_shard)


def _common_root(urls: List[str]) -> str:
    roots = {os.path.dirname(u) or "." for u in urls}
    if len(roots) != 1:
        raise SpgError(f"shard URLs must share one folder (with its manifest.json), got {sorted(roots)[:3]}")
    return roots.pop()


class HashingReader:
    """A read-only stream that hashes what passes through, so a shard is verified while it is read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data

    def drain(self) -> str:
        """Read what the tar reader left (end-of-archive padding) and return the hex digest."""
        for block in iter(lambda: self.read(1 << 20), b""):
            pass
        return self.digest.hexdigest()

    def close(self) -> None:
        self.raw.close()


def open_shard(url: str) -> BinaryIO:
    try:
        return open(url, "rb", buffering=1 << 20)
    except OSError as exc:
        raise ShardError(f"{url}: cannot open shard: {exc.strerror or exc}") from None
