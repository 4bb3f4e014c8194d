"""Where shards come from: a shard folder, a manifest.json path, or a brace-expanded list of shard URLs,
on local disk or at `s3://bucket/prefix` (storage/ does the reading).

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
from typing import Any, BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import braceexpand

from .. import storage
from ..errors import ShardError, SpgError, first_line, shown
from ..format import index as columns
from ..format.codec import unpack
from ..format.manifest import check_manifest, check_rows
from ..format.names import INDEX_NAME, MANIFEST_NAME, READABLE_VERSIONS, ROWS_INDEX_NAME
from ..storage import s3
from ..storage.local import open_regular

Source = Union[str, os.PathLike, Sequence[str]]
MANIFEST_LIMIT = 1 << 30  # bytes; a manifest is JSON text that holds every bad-input row of its run
INDEX_LIMIT = 16 << 30  # bytes, for a format-1 index (its manifest does not record its size)


@dataclasses.dataclass
class ShardSet:
    """A manifest, the selected shards (manifest positions, in the order given) and the file index."""

    root: str
    manifest: Dict[str, Any]
    selected: List[int]
    index: columns.Index
    index_path: str
    backing: Any = None  # what the index's arrays are views of: an mmap (local) or bytes
    mapped_identity: Any = None  # (device, inode, size, mtime) of a memory-mapped index file
    s3_settings: Dict[str, Any] = dataclasses.field(default_factory=dict)  # s3.configure() when opened

    @property
    def shards(self) -> List[Dict[str, Any]]:
        return [self.manifest["shards"][k] for k in self.selected]

    def url(self, shard: Dict[str, Any]) -> str:
        return os.path.join(self.root, shard["name"])

    def open_shard(self, shard: Dict[str, Any]) -> BinaryIO:
        """A stream over one of the shards (from the S3 cache when one is configured and holds it)."""
        return storage.open_shard(self.url(shard), shard["bytes"], shard["sha256"])

    def __getstate__(self) -> Dict[str, Any]:
        """For a spawned DataLoader worker: a memory-mapped index travels as its path and is mapped again
        there (not pickled as a copy); the S3 settings made with s3.configure() travel along."""
        state = dict(self.__dict__)
        if isinstance(self.backing, mmap.mmap):
            state["backing"], state["index"] = ("mapped",), None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        s3.adopt(self.s3_settings)
        if isinstance(self.backing, tuple):
            self.backing = _map(self.index_path, self.mapped_identity)
            self.index = columns.decode(self.backing)


def open_source(source: Source) -> ShardSet:
    """Resolve `source` to a ShardSet; errors name the path and say what is missing."""
    root, manifest_path, names = _locate(source)
    manifest = _read_manifest(root, manifest_path)
    selected = list(range(len(manifest["shards"])))
    if names is not None:
        position = {s["name"]: k for k, s in enumerate(manifest["shards"])}
        missing = [name for name in names if name not in position]
        if missing:
            raise SpgError(f"{manifest_path}: does not list {', '.join(missing[:5])}")
        if len(set(names)) != len(names):  # a shard twice would yield its windows twice an epoch
            raise SpgError(f"{source}: names a shard more than once")
        selected = [position[name] for name in names]
    if manifest["format_version"] == 1:
        index_path = os.path.join(root, manifest.get("index", ROWS_INDEX_NAME))
        index, backing, identity = _rows_index(index_path, manifest), None, None
    else:
        index_path = os.path.join(root, manifest.get("index", INDEX_NAME))
        index, backing, identity = _columns_index(index_path, manifest)
    return ShardSet(root, manifest, selected, index, index_path, backing, identity,
                    s3.overrides() if s3.is_s3_url(root) else {})


def _locate(source: Source) -> Tuple[str, str, Optional[List[str]]]:
    """(shard folder, manifest path, shard names selected or None for all)."""
    if isinstance(source, (list, tuple)):
        urls = [u for s in source for u in braceexpand.braceexpand(os.fspath(s))]
        roots = {os.path.dirname(u) or "." for u in urls}
        if len(roots) != 1:
            raise SpgError(f"shard URLs must share one folder (with its manifest.json), got {sorted(roots)[:3]}")
        root = roots.pop()
        return root, os.path.join(root, MANIFEST_NAME), [os.path.basename(u) for u in urls]
    source = os.fspath(source)
    if source.startswith("s3:/") and not s3.is_s3_url(source):
        raise SpgError(f"{source}: looks like an s3:// URL with one slash lost (pathlib.Path does that); "
                       "pass the URL as a str")
    if "{" in source or source.endswith(".tar"):
        return _locate([source])
    if source.endswith(".json"):
        return os.path.dirname(source) or ".", source, None
    return source, os.path.join(source, MANIFEST_NAME), None


def _read_manifest(root: str, manifest_path: str) -> Dict[str, Any]:
    data = storage.read_bytes(manifest_path, MANIFEST_LIMIT, missing_ok=True)
    if data is None:
        if _holds_audio(root):
            raise SpgError(f"{root}: holds audio files, not shards. Write them with `spg-shard {root} SHARDS` and "
                           "open SHARDS, or in one call: SpectrogramDataset(audio_root=..., spectrograms_root=..., "
                           "index_root=..., metadata_json_path=...)")
        if storage.folder_exists(root):
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
    return check_manifest(manifest, manifest_path)


def _holds_audio(root: str) -> bool:
    """Whether a local folder (or its first level of subfolders) holds audio files: the user gave an audio
    folder where shards were expected."""
    from ..write.inputs import AUDIO_EXTENSIONS

    if s3.is_s3_url(root) or not os.path.isdir(root):
        return False
    for folder, dirs, files in os.walk(root):
        if any(os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS for name in files):
            return True
        if os.path.relpath(folder, root).count(os.sep) >= 1:
            dirs[:] = []
    return False


def _columns_index(path: str, manifest: Dict[str, Any]) -> Tuple[columns.Index, Any, Any]:
    """The columnar index, after its size and sha256 show it is the one the manifest names; memory-mapped
    when local (hashed with plain reads first, so the check leaves no pages in this process's memory)."""
    expected, digest, identity = manifest["index_bytes"], manifest["index_sha256"], None
    if s3.is_s3_url(path):
        backing = storage.read_bytes(path, expected, what="cannot read the file index")
        _check_digest(path, len(backing), hashlib.sha256(backing).hexdigest(), expected, digest)
    else:
        size, found, identity = _hash_file(path, expected)
        _check_digest(path, size, found, expected, digest)
        backing = _map(path, identity)
    try:
        index = columns.decode(backing)
    except columns.BadIndex as exc:
        raise ShardError(f"{path}: {exc}") from None
    problem = columns.check_values(index, manifest["features"]["hop_length"], manifest["shards"],
                                   segmented="segments" in manifest)
    if problem:
        raise ShardError(f"{path}: {problem} (edited or mismatched index)")
    return index, backing, identity


def _rows_index(path: str, manifest: Dict[str, Any]) -> columns.Index:
    """A format-1 index (msgpack rows), checked row by row and turned into columns in memory."""
    data = storage.read_bytes(path, INDEX_LIMIT, what="cannot read the file index")
    if "index_sha256" in manifest:
        _check_digest(path, len(data), hashlib.sha256(data).hexdigest(), manifest["index_bytes"],
                      manifest["index_sha256"])
    elif len(data) > INDEX_LIMIT:
        raise ShardError(f"{path}: larger than {INDEX_LIMIT} bytes; not a file index")
    try:
        rows = unpack(data)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ShardError(f"{path}: not a file index ({type(exc).__name__}: {first_line(exc)})") from None
    rows = check_rows(rows, manifest, path)
    index = columns.from_rows(rows, [s["name"] for s in manifest["shards"]])
    if index.offset is not None:  # format 1 predates segments: such rows would be read as whole files
        raise ShardError(f"{path}: rows with segment offsets in a format-1 index (edited or mismatched index)")
    return index


def _check_digest(path: str, size: int, found: str, expected_size: int, expected: str) -> None:
    if size != expected_size or found != expected:
        read = size if size <= expected_size else f"more than {expected_size}"
        raise ShardError(f"{path}: {read} bytes with sha256 {found[:12]}..., the manifest says {expected_size} "
                         f"bytes, {expected[:12]}... (edited or replaced index)")


def _hash_file(path: str, limit: int) -> Tuple[int, str, Tuple[int, int, int, int]]:
    """(bytes, sha256, identity) of a local file, read in blocks, at most limit + 1 bytes."""
    digest, size = hashlib.sha256(), 0
    try:
        with open_regular(path) as f:
            identity = _identity(os.fstat(f.fileno()))
            while size <= limit:
                block = f.read(min(1 << 22, limit + 1 - size))
                if not block:
                    break
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        raise SpgError(f"{path}: cannot read the file index: no such file") from None
    except OSError as exc:
        raise SpgError(f"{path}: cannot read the file index: {exc.strerror or exc}") from None
    return size, digest.hexdigest(), identity


def _identity(st: os.stat_result) -> Tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _map(path: str, identity: Tuple[int, int, int, int]) -> mmap.mmap:
    """A read-only map of the file whose digest was checked: it must still be that very file (not replaced
    since, in this process or, for a spawned worker, in its parent)."""
    with open_regular(path) as f:
        if _identity(os.fstat(f.fileno())) != identity:
            raise ShardError(f"{path}: the file index changed since it was checked")
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
