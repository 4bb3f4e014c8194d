"""Where shards come from: a shard folder, a manifest.json path, or a brace-expanded list of shard URLs,
on local disk or at `s3://bucket/prefix` (a storage object, storage.at, does the reading).

Everything a reader needs before opening a shard (shard list, file index, label vocabularies, feature
parameters, statistics) comes from manifest.json and the file index beside the shards, both checked before
use (format/manifest.py, format/index.py). A local index is memory-mapped: DataLoader workers and the ranks
of one machine share its pages instead of holding copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union, cast

import braceexpand

from .. import storage
from ..errors import ShardError, SpgError, first_line, shown
from ..format import index as columns
from ..format.codec import unpack
from ..format.manifest import Manifest, ShardEntry, check_rows
from ..format.names import AUDIO_EXTENSIONS, INDEX_NAME, MANIFEST_NAME, READABLE_VERSIONS, ROWS_INDEX_NAME
from ..storage import Storage
from ..storage.local import map_file

Source = Union[str, os.PathLike, Sequence[str]]
MANIFEST_LIMIT = 1 << 30  # bytes; a manifest is JSON text that holds every bad-input row of its run
INDEX_LIMIT = 16 << 30  # bytes, for a format-1 index (its manifest does not record its size)


@dataclasses.dataclass
class ShardSet:
    """A manifest, the selected shards (manifest positions, in the order given), the file index, and the storage
    they are read from (with its S3 settings: a spawned DataLoader worker reaches S3 as the process that opened
    the set did)."""

    root: str
    manifest: Manifest
    selected: List[int]
    index: columns.Index
    index_path: str
    storage: Storage
    backing: Any = None  # what the index's arrays are views of: an mmap (local) or bytes
    mapped_identity: Any = None  # (device, inode, size, mtime) of a memory-mapped index file

    @property
    def shards(self) -> List[ShardEntry]:
        return [self.manifest.shards[k] for k in self.selected]

    def url(self, shard: ShardEntry) -> str:
        return self.storage.url(shard.name)

    def open_shard(self, shard: ShardEntry) -> BinaryIO:
        """A stream over one of the shards (from the S3 cache when one is configured and holds it)."""
        return self.storage.open_shard(shard.name, shard.bytes, shard.sha256)

    def will_read(self, k: int) -> None:
        """Manifest shard k is read next: a local one is read into the page cache meanwhile (Storage.will_read)."""
        self.storage.will_read(self.manifest.shards[k].name)

    def __getstate__(self) -> Dict[str, Any]:
        """For a spawned DataLoader worker: a memory-mapped index travels as its path and is mapped again
        there (not pickled as a copy); the storage travels with its settings."""
        state = dict(self.__dict__)
        if isinstance(self.backing, mmap.mmap):
            state["backing"], state["index"] = ("mapped",), None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self.backing, tuple):
            self.backing = map_file(self.index_path, self.mapped_identity)
            self.index = columns.decode(self.backing)


def open_source(source: Source) -> ShardSet:
    """Resolve `source` to a ShardSet; errors name the path and say what is missing."""
    root, manifest_path, names = _locate(source)
    store = storage.at(root)
    manifest = _read_manifest(store, manifest_path)
    selected = list(range(len(manifest.shards)))
    if names is not None:
        position = {s.name: k for k, s in enumerate(manifest.shards)}
        missing = [name for name in names if name not in position]
        if missing:
            raise SpgError(f"{manifest_path}: does not list {', '.join(missing[:5])}")
        if len(set(names)) != len(names):  # a shard twice would yield its windows twice an epoch
            raise SpgError(f"{source}: names a shard more than once")
        selected = [position[name] for name in names]
    if manifest.format_version == 1:
        index_name = manifest.index_name or ROWS_INDEX_NAME
        index, backing, identity = _rows_index(store, index_name, manifest), None, None
    else:
        index_name = manifest.index_name or INDEX_NAME
        index, backing, identity = _columns_index(store, index_name, manifest)
    return ShardSet(root, manifest, selected, index, store.url(index_name), store, backing, identity)


def _locate(source: Source) -> Tuple[str, str, Optional[List[str]]]:
    """(shard folder, manifest path, shard names selected or None for all)."""
    if isinstance(source, (list, tuple)):
        urls = [u for s in source for u in braceexpand.braceexpand(os.fspath(s))]
        roots = {os.path.dirname(u) or "." for u in urls}
        if len(roots) != 1:
            raise SpgError(f"shard URLs must share one folder (with its manifest.json), got {sorted(roots)[:3]}")
        root = roots.pop()
        return root, os.path.join(root, MANIFEST_NAME), [os.path.basename(u) for u in urls]
    path = os.fspath(cast("Union[str, os.PathLike[str]]", source))
    storage.check_url(path)
    if "{" in path or path.endswith(".tar"):
        return _locate([path])
    if path.endswith(".json"):
        return os.path.dirname(path) or ".", path, None
    return path, os.path.join(path, MANIFEST_NAME), None


def _read_manifest(store: Storage, manifest_path: str) -> Manifest:
    root = store.root
    data = store.read_bytes(os.path.basename(manifest_path), MANIFEST_LIMIT, missing_ok=True)
    if data is None:
        if store.holds_files(AUDIO_EXTENSIONS):
            raise SpgError(f"{root}: holds audio files, not shards. Write them with `spg-shard {root} SHARDS` and "
                           "open SHARDS, or in one call: SpectrogramDataset(audio_root=..., spectrograms_root=..., "
                           "index_root=..., metadata_json_path=...)")
        if store.exists():
            raise SpgError(f"{manifest_path}: not found; spg-shard writes it last, so the run that made {root} "
                           "did not finish (rerun it to complete) or this is not a shard folder")
        raise SpgError(f"{root}: no such shard folder")
    if len(data) > MANIFEST_LIMIT:
        raise SpgError(f"{manifest_path}: larger than {MANIFEST_LIMIT} bytes; not a manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise SpgError(f"{manifest_path}: not a manifest ({type(exc).__name__}: {first_line(exc)})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if type(version) is not int or version not in READABLE_VERSIONS:  # not True, 1.0 or 10**400
        raise SpgError(f"{manifest_path}: format_version {shown(version, 40)}, this spgdataset reads "
                       f"{' and '.join(map(str, READABLE_VERSIONS))}")
    return Manifest.read(manifest, manifest_path)


def _columns_index(store: Storage, name: str, manifest: Manifest) -> Tuple[columns.Index, Any, Any]:
    """The columnar index, after its size and sha256 show it is the one the manifest names; memory-mapped
    when local (storage's read_checked)."""
    path, expected, digest = store.url(name), int(manifest.index_bytes or 0), str(manifest.index_sha256)

    def check(size: int, found: str) -> None:
        _check_digest(path, size, found, expected, digest)

    backing, identity = store.read_checked(name, expected, check, "cannot read the file index")
    try:
        index = columns.decode(backing)
    except columns.BadIndex as exc:
        raise ShardError(f"{path}: {exc}") from None
    problem = columns.check_values(index, manifest.features.hop_length, manifest.raw["shards"],
                                   segmented=manifest.segments is not None)
    if problem:
        raise ShardError(f"{path}: {problem} (edited or mismatched index)")
    return index, backing, identity


def _rows_index(store: Storage, name: str, manifest: Manifest) -> columns.Index:
    """A format-1 index (msgpack rows), checked row by row and turned into columns in memory."""
    path = store.url(name)
    data = store.read_bytes(name, INDEX_LIMIT, what="cannot read the file index") or b""  # None only if missing_ok
    if manifest.index_sha256 is not None:
        _check_digest(path, len(data), hashlib.sha256(data).hexdigest(), int(manifest.index_bytes or 0),
                      manifest.index_sha256)
    elif len(data) > INDEX_LIMIT:
        raise ShardError(f"{path}: larger than {INDEX_LIMIT} bytes; not a file index")
    try:
        rows = unpack(data)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ShardError(f"{path}: not a file index ({type(exc).__name__}: {first_line(exc)})") from None
    rows = check_rows(rows, manifest.raw, path)
    index = columns.from_rows(rows, [s.name for s in manifest.shards])
    if index.offset is not None:  # format 1 predates segments: such rows would be read as whole files
        raise ShardError(f"{path}: rows with segment offsets in a format-1 index (edited or mismatched index)")
    return index


def _check_digest(path: str, size: int, found: str, expected_size: int, expected: str) -> None:
    if size != expected_size or found != expected:
        read = size if size <= expected_size else f"more than {expected_size}"
        raise ShardError(f"{path}: {read} bytes with sha256 {found[:12]}..., the manifest says {expected_size} "
                         f"bytes, {expected[:12]}... (edited or replaced index)")
