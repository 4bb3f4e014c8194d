"""Inputs: metadata.json in the seed format, a folder walk or a file list, checked entry by entry.

metadata.json: {relpath: {"length": samples, "intervals": {name: [[start, stop], ...]}, "metadata": {key: value}}}
with intervals in samples of the file's own rate, half-open [start, stop). Every key is optional.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from ..errors import BadInput, SpgError
from ..format.names import AUDIO_EXTENSIONS
from ..storage.local import open_regular
from .annotations import Annotation

SCALAR = (str, int, float, bool, type(None))


@dataclasses.dataclass
class FileEntry:
    """One audio file to shard. `path` is its name as stored: relative to the audio root, normalised
    (`./a.wav` and `sub/../a.wav` are `a.wav`)."""

    path: str
    abspath: str
    length: Optional[int] = None  # samples at the file's own rate, as metadata.json claims
    intervals: Dict[str, List[List[int]]] = dataclasses.field(default_factory=dict)
    metadata: Dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)  # problems fixed on the way, for the report
    annotation: Optional[Annotation] = None  # read from its annotation file (write/annotated.py)


def load_metadata_json(path: Union[str, Path]) -> Dict[str, Any]:
    """Read metadata.json; an unreadable file is fatal for the run (SpgError naming it)."""
    path = Path(path)
    try:
        with open_regular(str(path)) as f:
            raw = f.read()
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
    except RecursionError:
        raise SpgError(f"{path}: JSON nested too deeply to read (metadata.json needs three levels)") from None
    if not isinstance(data, dict):
        raise SpgError(f"{path}: metadata must be a JSON object {{relpath: {{...}}}}, got {type(data).__name__}")
    return data


def parse_entry(path: str, abspath: str, raw: Any) -> FileEntry:
    """Check one metadata.json entry; raise BadInput naming the file and what is wrong.

    An empty interval ([s, s]) holds no sample: it is dropped with a warning and the file kept.
    """
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
    warnings = []
    for name, spans in intervals_raw.items():
        if not isinstance(spans, list):
            raise BadInput(path, f"intervals[{name!r}] must be a list of [start, stop] pairs")
        checked = []
        for span in spans:
            if not (isinstance(span, (list, tuple)) and len(span) == 2 and _is_int(span[0]) and _is_int(span[1])):
                raise BadInput(path, f"intervals[{name!r}] has {span!r}; expected [start, stop] in whole samples")
            start, stop = int(span[0]), int(span[1])
            if start < 0:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] starts before the file")
            if stop < start:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] is reversed (need start < stop)")
            if length is not None and stop > length:
                raise BadInput(path, f"intervals[{name!r}] [{start}, {stop}] ends after the file's length {length}")
            if stop == start:
                warnings.append(f"intervals[{name!r}] [{start}, {stop}] is empty; dropped")
                continue
            checked.append([start, stop])
        intervals[str(name)] = checked
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadInput(path, f"metadata must be an object {{key: value}}, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(value, SCALAR):
            raise BadInput(path, f"metadata[{key!r}] must be a string, number, boolean or null, got {type(value).__name__}")
    return FileEntry(path, abspath, None if length is None else int(length), intervals, dict(metadata), warnings)


def _is_int(value: Any) -> bool:
    if type(value) is int:
        return True
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def is_inside(real: str, real_root: str) -> bool:
    """Whether the real path `real` is `real_root` or below it."""
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def walk_audio(root: Union[str, Path], allow_outside_root: bool = False,
               extensions: Optional[Set[str]] = None) -> List[str]:
    """Audio files under `root` by extension (`extensions`, lower case with the dot; default: every audio
    extension), as sorted paths relative to it.

    Linked folders are followed once each: a folder already walked (a symlink loop, or two links to one
    folder) is not walked again, and one outside the root only with `allow_outside_root`.
    """
    root = str(root)
    real_root = os.path.realpath(root)
    walked = set()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in walked or not (allow_outside_root or is_inside(real, real_root)):
            dirs[:] = []
            continue
        walked.add(real)
        dirs.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in (extensions or AUDIO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def read_file_list(list_path: Union[str, Path], root: Union[str, Path]) -> List[str]:
    """One path per line (blank lines and '#' comments skipped): relative to `root`, or absolute."""
    try:
        with open_regular(str(list_path)) as f:
            lines = f.read().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpgError(f"{list_path}: cannot read file list: {getattr(exc, 'strerror', None) or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def resolve_path(name: str, root: str, allow_outside_root: bool = False,
                 real_root: Optional[str] = None) -> Tuple[str, str, str]:
    """(path as stored, absolute path, real path) of an input name; BadInput when it leaves the root.

    Stored paths are normalised and relative to the root (an absolute name inside the root included);
    with `allow_outside_root`, a name outside it stays as given (normalised). The real path (symlinks
    resolved) tells where the audio is: it must lie inside the root too, and it identifies duplicates.
    """
    return PathResolver(root, allow_outside_root, real_root).resolve(name)


class PathResolver:
    """resolve_path() for many names under one root: a folder's real and relative paths are worked out once,
    so a name costs one lstat instead of one per path component (40 µs a file at a million files)."""

    def __init__(self, root: str, allow_outside_root: bool = False, real_root: Optional[str] = None) -> None:
        self.root, self.allow_outside_root = root, allow_outside_root
        self.real_root = real_root or os.path.realpath(root)
        self.abs_root = os.path.abspath(root)
        self.folders: Dict[str, Tuple[str, str]] = {}  # folder -> (real path, path relative to the root)

    def resolve(self, name: str) -> Tuple[str, str, str]:
        try:
            given = name.replace(os.sep, "/")
            absolute = os.path.normpath(given if os.path.isabs(given) else os.path.join(self.root, given))
            lexical, real = self._locate(absolute)
        except (ValueError, OSError) as exc:  # a NUL byte, an over-long name
            raise BadInput(name, f"not a usable file name ({exc})") from None
        if lexical == ".":
            raise BadInput(name, "names the audio root itself, not a file")
        inside = not (lexical == ".." or lexical.startswith("../"))
        if not self.allow_outside_root and not (inside and is_inside(real, self.real_root)):
            what = "is outside the audio root" if not inside else "is a link to a file outside the audio root"
            raise BadInput(name, f"{what}; pass --allow-outside-root (allow_outside_root=True) to take it")
        if inside:
            return lexical, absolute, real
        return (absolute if os.path.isabs(given) else posixpath.normpath(given)), absolute, real

    def _locate(self, absolute: str) -> Tuple[str, str]:
        """(path relative to the root, real path) of a normalised path."""
        folder, base = os.path.split(absolute)
        if base in ("", ".", ".."):  # the file system's root, or a path made only of ".."
            return os.path.relpath(absolute, self.abs_root).replace(os.sep, "/"), os.path.realpath(absolute)
        known = self.folders.get(folder)
        if known is None:
            known = self.folders[folder] = (os.path.realpath(folder),
                                            os.path.relpath(folder, self.abs_root).replace(os.sep, "/"))
        real_folder, relative_folder = known
        try:
            linked = stat.S_ISLNK(os.lstat(absolute).st_mode)
        except FileNotFoundError:  # reported when the file is read
            linked = False
        real = os.path.realpath(absolute) if linked else os.path.join(real_folder, base)
        return (base if relative_folder == "." else f"{relative_folder}/{base}"), real


def collect_inputs(
    audio_root: Union[str, Path],
    metadata_path: Optional[Union[str, Path]] = None,
    files: Optional[Sequence[str]] = None,
    keep: Optional[Mapping[str, Iterable[Any]]] = None,
    allow_outside_root: bool = False,
    audio_format: Optional[str] = None,
) -> Tuple[List[FileEntry], List[BadInput]]:
    """The files to shard, sorted by stored path, and the inputs refused before any audio is read.

    Which files: `files` if given, else the keys of metadata.json, else every audio file under the root.
    Names that leave the root are refused (unless `allow_outside_root`); names of one file (`a.wav`,
    `./a.wav`, a link to it) keep one entry, the one spelled as stored if there is one, and the others are
    reported as duplicates. `keep` {key: allowed values} keeps only files whose metadata[key] is among
    the values (as text). `audio_format` ("wav", "flac", ...) takes only files of that extension.
    """
    extensions = {audio_extension(audio_format)} if audio_format is not None else None
    root = str(audio_root)
    metadata = load_metadata_json(metadata_path) if metadata_path is not None else {}
    if files is not None:
        names = list(dict.fromkeys(files))
    elif metadata_path is not None:
        names = list(metadata)
    else:
        if not os.path.isdir(root):
            raise SpgError(f"{root}: audio root is not a directory")
        names = walk_audio(root, allow_outside_root, extensions)
    if extensions is not None and (files is not None or metadata_path is not None):
        names = [n for n in names if os.path.splitext(n)[1].lower() in extensions]
    allowed: Dict[str, Set[str]] = {k: {str(v) for v in values} for k, values in (keep or {}).items()}
    by_file: Dict[str, List[Tuple[str, FileEntry]]] = {}
    rejected: List[BadInput] = []
    resolver = PathResolver(root, allow_outside_root)
    for name in sorted(names):
        try:
            path, absolute, real = resolver.resolve(name)
            entry = parse_entry(path, absolute, metadata[name] if name in metadata else metadata.get(path))
            by_file.setdefault(real, []).append((name, entry))
        except BadInput as bad:  # reported under the name it was given
            rejected.append(BadInput(name, bad.problem, bad.kind))
    entries = []
    for spellings in by_file.values():
        name, entry = min(spellings, key=lambda s: (s[0] != s[1].path, s[0]))
        rejected += [BadInput(other, f"same file as {entry.path}; stored once, under that name", kind="duplicate")
                     for other, _ in spellings if other != name]
        try:
            _check_keep(entry, allowed)
            entries.append(entry)
        except BadInput as bad:
            rejected.append(bad)
    entries.sort(key=lambda e: e.path)
    return entries, rejected


def _check_keep(entry: FileEntry, allowed: Mapping[str, Set[str]]) -> None:
    for key, values in allowed.items():
        if key not in entry.metadata:
            raise BadInput(entry.path, f"keep: no metadata[{key!r}]", kind="filtered")
        if str(entry.metadata[key]) not in values:
            raise BadInput(entry.path, f"keep: metadata[{key!r}]={entry.metadata[key]!r} is not among the values kept",
                           kind="filtered")


def audio_extension(audio_format: str) -> str:
    """".wav" for "wav", "WAV" or ".wav"; SpgError for a format no audio extension has (vak's "cbin" among them)."""
    extension = "." + str(audio_format).lower().lstrip(".")
    if extension == ".cbin":
        raise SpgError("audio format 'cbin' (Evtaf) is not read here: convert the files to WAV")
    if extension not in AUDIO_EXTENSIONS:
        raise SpgError(f"audio format {audio_format!r} is not one this library reads "
                       f"({', '.join(sorted(e[1:] for e in AUDIO_EXTENSIONS))})")
    return extension
