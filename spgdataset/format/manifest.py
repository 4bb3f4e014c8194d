"""manifest.json and index.msgpack as a reader takes them: checked field by field before anything is used.

A shard set can come from anywhere (an s3:// prefix someone else writes, a folder copied by hand), so every
value a reader acts on is checked here: names are plain file names inside the source (never a path, a URL
or `..`), digests are sha256 hex, counts are integers from 0 to 2**62 (nothing overflows int64), seconds
finite, statistics finite and within the storage type's range, labels JSON scalars. The index is checked
in format/index.py (columns) or here (format 1, rows). A failed check is an SpgError (ShardError for the
index) that names the file and the field.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import ShardError, SpgError, shown
from ..rules.framelabels import labelmap_problem
from ..rules.labels import from_json, label_token
from .features import VALUE_LIMIT, FeatureConfig, is_plain_finite
from .names import SEGMENTED_FORMAT_VERSION, is_sha256

PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")  # no '/', '\\', ':' or leading '.'
KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")
MAX_COUNT = 2**62  # counts, frames, bytes, seconds: int64 with room for a sum of two (numpy, the index columns)


def is_plain_name(value: Any) -> bool:
    return isinstance(value, str) and PLAIN_NAME.fullmatch(value) is not None


def _is_count(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and minimum <= value <= MAX_COUNT


def _not_count(value: Any, minimum: int) -> str:
    return f"{shown(value, 40)} is not an integer from {minimum} to 2**62"


def check_manifest(manifest: Any, where: str) -> Dict[str, Any]:
    """The manifest, checked, with its label vocabularies decoded (labels.from_json)."""
    def fail(field: str, problem: str) -> SpgError:
        return SpgError(f"{where}: {field}: {problem}")

    if not isinstance(manifest, dict):
        raise SpgError(f"{where}: not a manifest (a JSON object), got {type(manifest).__name__}")
    try:
        features = FeatureConfig.from_dict(manifest.get("features"))
    except (TypeError, ValueError) as exc:
        raise fail("features", str(exc)) from None
    if not isinstance(manifest.get("params"), str):
        raise fail("params", "missing or not a string")
    if not isinstance(manifest.get("with_audio", False), bool):
        raise fail("with_audio", "not true/false")
    _check_shards(manifest.get("shards"), fail)
    manifest["labels"] = _checked_labels(manifest.get("labels"), fail)
    free_form = manifest.get("free_form", [])
    if not (isinstance(free_form, list) and all(isinstance(k, str) for k in free_form)):
        raise fail("free_form", "not a list of metadata keys")
    _check_stats(manifest.get("stats"), features, fail)
    problem = None if manifest.get("labelmap") is None else labelmap_problem(manifest["labelmap"])
    if problem:
        raise fail("labelmap", f"{problem} (vak's labelmap of its names: \"background\" 0, the others sorted from 1)")
    _check_segments(manifest, fail)
    _check_totals(manifest, fail)
    if "index" in manifest and not is_plain_name(manifest["index"]):
        raise fail("index", f"{manifest['index']!r} is not a plain file name inside the shard folder")
    required = manifest["format_version"] >= 2  # format 1 manifests may predate the index digest
    if (required or "index_sha256" in manifest) and not is_sha256(manifest.get("index_sha256")):
        raise fail("index_sha256", "missing or not 64 lowercase hex digits")
    if (required or "index_bytes" in manifest) and not _is_count(manifest.get("index_bytes")):
        raise fail("index_bytes", f"missing or {_not_count(manifest.get('index_bytes'), 0)}")
    return manifest


def _check_shards(shards: Any, fail: Any) -> None:
    if not isinstance(shards, list) or not shards:
        raise fail("shards", "missing, empty or not a list")
    names = set()
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            raise fail(f"shards[{i}]", "not an object")
        name = shard.get("name")
        if not is_plain_name(name):
            raise fail(f"shards[{i}].name", f"{name!r} is not a plain file name inside the shard folder")
        if name in names:
            raise fail(f"shards[{i}].name", f"{name} is listed twice")
        names.add(name)
        for field, minimum in (("files", 1), ("frames", 1), ("bytes", 1)):
            if not _is_count(shard.get(field), minimum):
                raise fail(f"shards[{i}].{field}", _not_count(shard.get(field), minimum))
        if not is_sha256(shard.get("sha256")):
            raise fail(f"shards[{i}].sha256", f"{shard.get('sha256')!r} is not 64 lowercase hex digits")
        if "seconds" in shard and not _is_seconds(shard["seconds"]):
            raise fail(f"shards[{i}].seconds",
                       f"{shown(shard['seconds'], 40)} is not a number of seconds from 0 to 2**62")


def _is_seconds(value: Any) -> bool:
    return is_plain_finite(value) and 0 <= value <= MAX_COUNT


def _check_segments(manifest: Dict[str, Any], fail: Any) -> None:
    """`segments` (the owned frames and overlap of a long file's segments) exactly when the format is 3: a
    reader from before segments refuses format 3, and this one must not read a segmented index as whole files."""
    segments = manifest.get("segments")
    if (segments is not None) != (manifest["format_version"] == SEGMENTED_FORMAT_VERSION):
        raise fail("segments", "present without format_version 3" if segments is not None else
                   "missing: a set with format_version 3 holds long files in segments and says how long")
    if segments is None:
        return
    if not isinstance(segments, dict):
        raise fail("segments", "not {\"frames\": a positive integer, \"overlap\": a non-negative integer}")
    for field, minimum in (("frames", 1), ("overlap", 0)):
        if not _is_count(segments.get(field), minimum):
            raise fail(f"segments.{field}", _not_count(segments.get(field), minimum))


def _check_totals(manifest: Dict[str, Any], fail: Any) -> None:
    """The numbers spg-inspect shows (totals, report counts), when present: counts and seconds in range."""
    totals, report = manifest.get("totals", {}), manifest.get("report", {})
    if not isinstance(totals, dict):
        raise fail("totals", "not an object")
    for field in ("files", "frames", "bytes", "shards"):
        if field in totals and not _is_count(totals[field]):
            raise fail(f"totals.{field}", _not_count(totals[field], 0))
    for field in ("seconds", "hours"):
        if field in totals and not _is_seconds(totals[field]):
            raise fail(f"totals.{field}", f"{shown(totals[field], 40)} is not a number from 0 to 2**62")
    if not (isinstance(report, dict) and isinstance(report.get("counts", {}), dict)
            and isinstance(report.get("files", []), list)):
        raise fail("report", "not {\"counts\": {kind: count}, \"files\": [rows]}")
    for kind, count in report.get("counts", {}).items():
        if not _is_count(count):
            raise fail(f"report.counts.{kind}", _not_count(count, 0))


def _checked_labels(labels: Any, fail: Any) -> Dict[str, List[Any]]:
    if not isinstance(labels, dict):
        raise fail("labels", "missing or not an object {key: [values]}")
    out = {}
    for key, values in labels.items():
        if not isinstance(values, list):
            raise fail(f"labels[{key!r}]", "not a list")
        try:
            out[key] = [from_json(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise fail(f"labels[{key!r}]", str(exc)) from None
        if len({label_token(v) for v in out[key]}) != len(out[key]):
            raise fail(f"labels[{key!r}]", "a label is listed twice")
    return out


def _check_stats(stats: Any, features: FeatureConfig, fail: Any) -> None:
    """Finite, n_mels long, within the storage type's range (features.VALUE_LIMIT: no honest mean or std of
    stored values lies beyond it, and within it the reader's normalisation stays finite in float32)."""
    if not isinstance(stats, dict):
        raise fail("stats", "missing or not an object")
    limit = VALUE_LIMIT[str(features.storage_dtype)]
    for name in ("mean", "std"):
        values = stats.get(name)
        if not isinstance(values, list) or len(values) != features.n_mels:
            raise fail(f"stats.{name}", f"need a list of n_mels={features.n_mels} numbers")
        if not all(is_plain_finite(v) for v in values):
            raise fail(f"stats.{name}", "holds NaN, an infinity or a non-number (the shards' features were not "
                                        "finite; rewrite them with this spgdataset)")
        beyond = next((v for v in values if abs(v) > limit), None)
        if beyond is not None:
            raise fail(f"stats.{name}", f"holds {shown(beyond, 40)}, beyond the {features.storage_dtype} storage range "
                                        f"(+-{limit:g})")
    if any(v < 0 for v in stats["std"]):
        raise fail("stats.std", "holds a negative value")
    if "frames" in stats and not _is_count(stats["frames"]):
        raise fail("stats.frames", _not_count(stats["frames"], 0))


# ---------------------------------------------------------------- a format-1 index (rows)


def check_rows(rows: Any, manifest: Mapping[str, Any], where: str) -> List[Dict[str, Any]]:
    """The rows of a format-1 index, each checked, their groups by shard checked against the manifest's file
    and frame counts; ShardError naming the index file otherwise."""
    if not isinstance(rows, list):
        raise ShardError(f"{where}: not a file index (a list of rows), got {type(rows).__name__}")
    hop = manifest["features"]["hop_length"]
    by_shard: Dict[str, List[Dict[str, Any]]] = {s["name"]: [] for s in manifest["shards"]}
    keys = set()
    for i, row in enumerate(rows):
        problem = _row_problem(row, hop)
        if problem is None and row["shard"] not in by_shard:
            problem = f"shard {row['shard']!r} is not in the manifest"
        if problem is None and row["key"] in keys:
            problem = "the key is listed twice"
        if problem is not None:
            key = row.get("key") if isinstance(row, dict) else None
            raise ShardError(f"{where}: row {i}{f' ({key!r})' if isinstance(key, str) else ''}: {problem}")
        keys.add(row["key"])
        by_shard[row["shard"]].append(row)
    for shard in manifest["shards"]:
        mine = by_shard[shard["name"]]
        frames = sum(r["frames"] for r in mine)
        if len(mine) != shard["files"] or frames != shard["frames"]:
            raise ShardError(f"{where}: {len(mine)} files, {frames} frames in {shard['name']}; the manifest says "
                             f"{shard['files']} files, {shard['frames']} frames (edited or mismatched index)")
    return list(rows)


def _row_problem(row: Any, hop: int) -> Any:
    """What is wrong with one index row, or None."""
    if not isinstance(row, dict):
        return "not an object"
    if not (isinstance(row.get("key"), str) and KEY.fullmatch(row["key"])):
        return f"key {row.get('key')!r} is not a sample key"
    if not isinstance(row.get("path"), str) or not isinstance(row.get("shard"), str):
        return "path or shard missing"
    frames: Any = row.get("frames")
    samples: Any = row.get("samples")
    if not (_is_count(frames, 1) and _is_count(samples)) or frames != 1 + samples // hop:
        return f"frames {frames!r} do not follow from samples {samples!r} at hop {hop}"
    intervals = row.get("intervals")
    if not isinstance(intervals, dict):
        return "intervals missing"
    for name, spans in intervals.items():
        if not isinstance(name, str) or not isinstance(spans, list):
            return f"intervals[{name!r}] is not a list"
        for span in spans:
            if not (isinstance(span, list) and len(span) == 2 and _is_count(span[0]) and _is_count(span[1])
                    and span[0] <= span[1] <= samples):
                return f"intervals[{name!r}] has {span!r}, not [start, stop] within the {samples} samples"
    metadata = row.get("metadata")
    if not isinstance(metadata, dict):
        return "metadata missing"
    try:
        for value in metadata.values():
            label_token(value)
    except TypeError as exc:
        return f"metadata: {exc}"
    return None


@dataclasses.dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""

    name: str
    files: int
    frames: int
    bytes: int
    sha256: str
    seconds: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Manifest:
    """manifest.json as a reader uses it: checked field by field (check_manifest), then typed. `raw` keeps the
    checked object for the row checks and for what only spg-inspect shows (totals, report, created_by)."""

    format_version: int
    features: FeatureConfig
    params: str  # the features' fingerprint, stored in every sample
    with_audio: bool
    shards: Tuple[ShardEntry, ...]
    mean: Tuple[float, ...]  # per bin, over the corpus
    std: Tuple[float, ...]
    segments: Optional[Tuple[int, int]]  # (owned frames, overlap) of a long file's segments; None: whole files
    index_name: Optional[str]  # the file index's name when not the default
    index_bytes: Optional[int]
    index_sha256: Optional[str]
    raw: Mapping[str, Any]
    labelmap: Optional[Dict[str, int]] = None  # frame labels' numbers (rules/framelabels.py); None: not written
    labelmap_refused: bool = False  # written as null: a label is named "background" (no labelmap can hold it)

    @classmethod
    def read(cls, data: Any, where: str) -> "Manifest":
        """The manifest in `data` (parsed JSON), checked; SpgError naming `where` and the field otherwise."""
        checked = check_manifest(data, where)
        shards = tuple(ShardEntry(s["name"], s["files"], s["frames"], s["bytes"], s["sha256"], s.get("seconds"))
                       for s in checked["shards"])
        segments = checked.get("segments")
        stats = checked["stats"]
        return cls(checked["format_version"], FeatureConfig.from_dict(checked["features"]), checked["params"],
                   bool(checked.get("with_audio", False)), shards, tuple(stats["mean"]), tuple(stats["std"]),
                   None if segments is None else (segments["frames"], segments["overlap"]), checked.get("index"),
                   checked.get("index_bytes"), checked.get("index_sha256"), checked, checked.get("labelmap"),
                   "labelmap" in checked and checked["labelmap"] is None)
