"""Inputs with annotation files (spg-shard --annot-format): each file's annotation found and read, vak's
labelset applied, and its segments turned into intervals once the file's sample rate is known.

Each label becomes an interval name, so masks per syllable class work as masks per speech or noise do; the
sequence of labels goes into the file's metadata as "labels" (a JSON list in text: metadata values are
scalars), and the annotation file's name as "annotation".
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Mapping, Optional, Set, Tuple

from ..errors import BadInput
from .annotations import annotation_format, annotation_paths_beside, intervals_in_samples, read_annotation
from .inputs import FileEntry, is_inside


def attach_annotations(entries: List[FileEntry], annot_format: str, annotations: Optional[Mapping[str, Any]],
                       labelset: Optional[Set[str]], audio_root: str,
                       allow_outside_root: bool = False) -> Tuple[List[FileEntry], List[BadInput]]:
    """The entries with their annotation read; files without a readable one are reported "bad", files with a
    label outside `labelset` "filtered" (vak skips both). `annotations` maps stored paths to annotation files;
    without it each file's annotation is looked for beside it (annotation_paths_beside). Annotation files follow
    the audio's rules: regular files inside `audio_root` (symlinks resolved), unless `allow_outside_root`."""
    fmt = annotation_format(annot_format)
    real_root = os.path.realpath(audio_root)
    kept, rejected = [], []
    for entry in entries:
        try:
            path = _annotation_path(entry, fmt, annotations)
            if not allow_outside_root:
                _check_inside(entry, path, real_root)
            annotation = read_annotation(path, fmt)
        except BadInput as bad:
            problem = bad.problem if bad.path == entry.path else f"annotation {bad.path}: {bad.problem}"
            rejected.append(BadInput(entry.path, problem))
            continue
        extra = sorted(set(annotation.labels) - labelset) if labelset is not None else []
        if extra:
            rejected.append(BadInput(entry.path, f"labels {extra} of {path} are not in the labelset", kind="filtered"))
            continue
        metadata = dict(entry.metadata)
        metadata.setdefault("labels", json.dumps(list(annotation.labels), ensure_ascii=False))
        metadata.setdefault("annotation", os.path.basename(path))
        kept.append(dataclasses.replace(entry, annotation=annotation, metadata=metadata))
    return kept, rejected


def _annotation_path(entry: FileEntry, fmt: str, annotations: Optional[Mapping[str, Any]]) -> str:
    if annotations is not None:
        if entry.path not in annotations:
            raise BadInput(entry.path, "no annotation file given for it")
        return os.fspath(annotations[entry.path])
    candidates = annotation_paths_beside(entry.abspath, fmt)
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    names = " or ".join(os.path.basename(c) for c in candidates)
    raise BadInput(entry.path, f"no {fmt} annotation beside it (looked for {names})")


def _check_inside(entry: FileEntry, path: str, real_root: str) -> None:
    """An annotation beside the audio may be a link to anything (/etc/passwd): it is read only from the root."""
    if not is_inside(os.path.realpath(path), real_root):
        what = "a link to a file outside" if os.path.islink(path) else "outside"
        raise BadInput(entry.path, f"annotation {os.path.basename(path)} is {what} the audio root; pass "
                                   "--allow-outside-root (allow_outside_root=True) to take it")


def with_annotation_intervals(entry: FileEntry, rate: int) -> FileEntry:
    """`entry` with its annotation's segments added to its intervals, in samples at the file's own `rate`
    (as metadata.json intervals are). Point labels (no sample) are left out with a warning."""
    if entry.annotation is None:
        return entry
    intervals = {name: list(spans) for name, spans in entry.intervals.items()}
    warnings = list(entry.warnings)
    for label, spans in intervals_in_samples(entry.annotation, rate).items():
        kept = [span for span in spans if span[1] > span[0]]
        if len(kept) < len(spans):
            warnings.append(f"annotation label {label!r}: {len(spans) - len(kept)} segment(s) shorter than a sample; "
                            "dropped")
        intervals.setdefault(label, []).extend(kept)
    return dataclasses.replace(entry, intervals=intervals, warnings=warnings)
