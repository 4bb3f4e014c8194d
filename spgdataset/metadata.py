"""Inputs: metadata.json in the seed format, a folder walk or a file list, checked entry by entry.

metadata.json: {relpath: {"length": samples, "intervals": {name: [[start, stop], ...]}, "metadata": {key: value}}}
with intervals in samples of the file's own rate, half-open [start, stop). Every key is optional.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .errors import BadInput, SpgError

AUDIO_EXTENSIONS = {
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".wv",
}
SCALAR = (str, int, float, bool, type(None))


@dataclasses.dataclass
class FileEntry:
    """One audio file to shard. `path` is its name in metadata.json (relative to the audio root)."""

    path: str
    abspath: str
    length: Optional[int] = None  # samples at the file's own rate, as metadata.json claims
    intervals: Dict[str, List[List[int]]] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)


def load_metadata_json(path: Union[str, Path]) -> Dict[str, Any]:
    """Read metadata.json; an unreadable file is fatal for the run (SpgError naming it)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpgError(f"{path}: cannot read metadata: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpgError(f"{path}: metadata is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpgError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise SpgError(f"{path}: metadata must be a JSON object {{relpath: {{...}}}}, got {type(data).__name__}")
    return data


def parse_entry(path: str, abspath: str, raw: Any) -> FileEntry:
    """Check one metadata.json entry; raise BadInput naming the file and what is wrong."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInput(path, f"metadata entry must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"length", "intervals", "metadata"})
    if unknown:
        raise BadInput(path, f"unknown fields in metadata entry: {', '.join(unknown)}")
    length = raw.get("length")
    if length is not None and (not _is_int(length) or length < 0):
        raise BadInput(path, f"length must be a non-negative integer (samples), got {length!r}")
    intervals_raw = raw.get("intervals") or {}
    if not isinstance(intervals_raw, dict):
        raise BadInput(path, f"intervals must be an object {{name: [[start, stop], ...]}}, got {type(intervals_raw).__name__}")
    intervals: Dict[str, List[List[int]]] = {}
    for name, spans in intervals_raw.items():
        if not isinstance(spans, list):
            raise BadInput(path, f"intervals[{name!r}] must be a list of [start, stop] pairs")
        checked = []
        for span in spans:
            if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(_is_int(v) for v in span)):
                raise BadInput(path, f"intervals[{name!r}] has {span!r}; expected [start, stop] in whole samples")
            start, stop = int(span[0]), int(span[1])
            if start < 0:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] starts before the file")
            if stop <= start:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] is reversed or empty (need start < stop)")
            if length is not None and stop > length:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] ends after the file's length {length}")
            checked.append([start, stop])
        intervals[str(name)] = checked
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadInput(path, f"metadata must be an object {{key: value}}, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(value, SCALAR):
            raise BadInput(path, f"metadata[{key!r}] must be a string, number, boolean or null, got {type(value).__name__}")
    return FileEntry(path, abspath, None if length is None else int(length), intervals, dict(metadata))


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def walk_audio(root: Union[str, Path]) -> List[str]:
    """Audio files under `root` by extension, as sorted paths relative to it."""
    root = str(root)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def read_file_list(list_path: Union[str, Path], root: Union[str, Path]) -> List[str]:
    """One path per line (blank lines and '#' comments skipped); relative paths are under `root`."""
    try:
        lines = Path(list_path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpgError(f"{list_path}: cannot read file list: {exc}") from None
    root_abs = os.path.abspath(root)
    paths = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if os.path.isabs(line):
            absolute = os.path.abspath(line)
            inside = os.path.commonpath([absolute, root_abs]) == root_abs
            line = os.path.relpath(absolute, root_abs).replace(os.sep, "/") if inside else absolute
        paths.append(line)
    return paths


def collect_inputs(
    audio_root: Union[str, Path],
    metadata_path: Optional[Union[str, Path]] = None,
    files: Optional[Sequence[str]] = None,
    labelset: Optional[Mapping[str, Iterable[Any]]] = None,
) -> Tuple[List[FileEntry], List[BadInput]]:
    """The files to shard, sorted by path, and the inputs rejected before any audio is read.

    Which files: `files` if given, else the keys of metadata.json, else every audio file under the root.
    `labelset` {key: allowed values} keeps only files whose metadata[key] is among the values (as text).
    """
    root = str(audio_root)
    metadata = load_metadata_json(metadata_path) if metadata_path is not None else {}
    if files is not None:
        names = list(dict.fromkeys(files))
    elif metadata_path is not None:
        names = list(metadata)
    else:
        if not os.path.isdir(root):
            raise SpgError(f"{root}: audio root is not a directory")
        names = walk_audio(root)
    allowed: Dict[str, Set[str]] = {k: {str(v) for v in values} for k, values in (labelset or {}).items()}
    entries, rejected = [], []
    for name in sorted(names):
        abspath = name if os.path.isabs(name) else os.path.join(root, name)
        try:
            entry = parse_entry(name, abspath, metadata.get(name))
            for key, values in allowed.items():
                if key not in entry.metadata:
                    raise BadInput(name, f"labelset: no metadata[{key!r}]", kind="filtered")
                if str(entry.metadata[key]) not in values:
                    raise BadInput(name, f"labelset: metadata[{key!r}]={entry.metadata[key]!r} not in the labelset", kind="filtered")
            entries.append(entry)
        except BadInput as bad:
            rejected.append(bad)
    return entries, rejected
