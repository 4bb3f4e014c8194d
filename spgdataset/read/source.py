"""Where shards come from: a shard folder, a manifest.json path, or a brace-expanded list of shard URLs,
on local disk or at `s3://bucket/prefix` (storage/ does the reading).

Everything a reader needs before opening a shard (shard list, file index, label vocabularies, feature
parameters, statistics) comes from manifest.json and index.msgpack beside the shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Union

import braceexpand

from ..errors import ShardError, SpgError
from ..format.codec import unpack
from ..format.manifest import check_index, check_manifest
from ..format.names import FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME
from .. import storage
from ..storage import s3

Source = Union[str, os.PathLike, Sequence[str]]
MANIFEST_LIMIT = 1 << 30  # bytes; a manifest is JSON text that holds every bad-input row of its run
INDEX_LIMIT = 16 << 30  # bytes, for an index whose manifest does not record its size (written by an older spg-shard)


@dataclasses.dataclass
class ShardSet:
    """A manifest, its shards (possibly a selection of them) and the per-file index rows by shard name."""

    root: str
    manifest: Dict[str, Any]
    shards: List[Dict[str, Any]]
    files_by_shard: Dict[str, List[Dict[str, Any]]]
    s3_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)  # s3.configure() when opened

    def __setstate__(self, state: Dict[str, Any]) -> None:
        """In a spawned DataLoader worker: bring along the S3 settings made with s3.configure()."""
        self.__dict__.update(state)
        s3.adopt(self.s3_settings)

    def url(self, shard: Dict[str, Any]) -> str:
        return os.path.join(self.root, shard["name"])

    def open_shard(self, shard: Dict[str, Any]) -> BinaryIO:
        """A stream over one of the shards (from the S3 cache when one is configured and holds it)."""
        return storage.open_shard(self.url(shard), shard["bytes"], shard["sha256"])


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
    data = storage.read_bytes(manifest_path, MANIFEST_LIMIT, missing_ok=True)
    if data is not None and len(data) > MANIFEST_LIMIT:
        raise SpgError(f"{manifest_path}: larger than {MANIFEST_LIMIT} bytes; not a manifest")
    if data is None:
        if storage.folder_exists(root):
            raise SpgError(f"{manifest_path}: not found; spg-shard writes it last, so the run that made {root} "
                           "did not finish (rerun it to complete) or this is not a shard folder")
        raise SpgError(f"{root}: no such shard folder")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise SpgError(f"{manifest_path}: not a manifest ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise SpgError(f"{manifest_path}: format version {version!r}, this spgdataset reads {FORMAT_VERSION}")
    manifest = check_manifest(manifest, manifest_path)
    shards = manifest["shards"]
    if selected is not None:
        by_name = {s["name"]: s for s in shards}
        missing = [name for name in selected if name not in by_name]
        if missing:
            raise SpgError(f"{manifest_path}: does not list {', '.join(missing[:5])}")
        shards = [by_name[name] for name in selected]
    index_path = os.path.join(root, manifest.get("index", INDEX_NAME))
    by_shard = check_index(_read_index(index_path, manifest), manifest, index_path)
    files_by_shard = {s["name"]: by_shard[s["name"]] for s in shards}
    return ShardSet(root, manifest, shards, files_by_shard, s3.overrides() if s3.is_s3_url(root) else {})


def _read_index(path: str, manifest: Dict[str, Any]) -> Any:
    """The index rows, after its digest (when the manifest has one) shows it is the one the writer made."""
    expected = manifest.get("index_bytes")
    data = storage.read_bytes(path, INDEX_LIMIT if expected is None else expected, what="cannot read the file index")
    if "index_sha256" in manifest:
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != expected or digest != manifest["index_sha256"]:
            raise ShardError(f"{path}: {len(data) if len(data) <= expected else 'more than ' + str(expected)} "
                             f"bytes with sha256 {digest[:12]}..., the manifest says {expected} bytes, "
                             f"{manifest['index_sha256'][:12]}... (edited or replaced index)")
    elif len(data) > INDEX_LIMIT:
        raise ShardError(f"{path}: larger than {INDEX_LIMIT} bytes; not a file index")
    try:
        return unpack(data)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ShardError(f"{path}: not a file index ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _common_root(urls: List[str]) -> str:
    roots = {os.path.dirname(u) or "." for u in urls}
    if len(roots) != 1:
        raise SpgError(f"shard URLs must share one folder (with its manifest.json), got {sorted(roots)[:3]}")
    return roots.pop()
