"""The output side of a run: writing shards and their state records, telling which are finished, finishing
(claiming the folder first is claim.py's).

Each shard is written piece by piece (hashed on the way, never joined in memory) under a temporary name and
renamed when complete (storage/), then recorded in `.spg-state/` with the stamp (size and mtime, or size and
ETag) the storage gave it. A rerun lists the folder once and compares stamps, instead of reading every shard
again. When every shard of the plan is recorded, the index and then manifest.json (last) are written: a
reader never sees a manifest naming a missing shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple, Union

import numpy as np

from ..errors import BadInput, SpgError
from ..format.codec import pack, unpack
from ..format.features import FeatureConfig
from ..format.index import DIGEST_BYTES, MAX_VOCABULARY
from ..format.index import encode as encode_index
from ..format.names import (FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME, SEGMENTED_FORMAT_VERSION, STATE_DIR,
                            shard_name)
from ..format.tar import tar_end
from ..rules.framelabels import labelmap
from ..rules.labels import to_json, vocabularies
from ..storage import Storage
from ..version import __version__
from .featurize import FileResult
from .report import count_kinds, nothing_usable, report_row

Encoded = bytes  # a record's msgpack: ShardRecord has a field named `bytes`, which hides the type in its body


@dataclasses.dataclass
class ShardRecord:
    """What `.spg-state/shard-NNNNNN.tar.msgpack` says of a finished shard (files == 0: all were bad)."""

    name: str
    files: int = 0
    frames: int = 0
    seconds: float = 0.0
    bytes: int = 0
    sha256: Optional[str] = None
    sum: Optional[List[float]] = None  # per mel bin, over the shard's frames
    sumsq: Optional[List[float]] = None
    index: List[Dict[str, Any]] = dataclasses.field(default_factory=list)  # index rows of its files
    report: List[Dict[str, str]] = dataclasses.field(default_factory=list)  # report rows of its bad files
    stamp: Optional[str] = None  # the storage's stamp of the tar when written (None: written before 0.3)
    stat_frames: Optional[int] = None  # frames sum/sumsq cover, when not all (segments' overlaps count once)

    @classmethod
    def from_bytes(cls, data: Optional[Encoded]) -> Optional["ShardRecord"]:
        """The record, or None when the bytes are not one (a damaged record means: write the shard again)."""
        try:
            record = cls(**unpack(data)) if data is not None else None
        except Exception:  # not msgpack, not a map, other fields
            return None
        return record if record is not None and record.well_formed() else None

    def to_bytes(self) -> Encoded:
        return pack({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})  # asdict deep-copies rows

    def well_formed(self) -> bool:
        numbers = (self.files, self.frames, self.bytes)
        lists = (self.sum, self.sumsq) if self.files else ()
        return (isinstance(self.name, str) and all(type(n) is int and n >= 0 for n in numbers)
                and isinstance(self.seconds, (int, float)) and isinstance(self.index, list)
                and isinstance(self.report, list) and len(self.index) == self.files
                and all(isinstance(row, dict) for row in self.index + self.report)
                and all(isinstance(v, list) for v in lists) and isinstance(self.stamp, (str, type(None)))
                and (self.stat_frames is None
                     or (type(self.stat_frames) is int and 0 <= self.stat_frames <= self.frames)))


def state_path(k: int) -> str:
    """The state record of shard k, relative to OUTPUT_DIR."""
    return f"{STATE_DIR}/{shard_name(k)}.msgpack"


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (no NaN or Infinity, which other languages' parsers refuse)."""
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


@dataclasses.dataclass
class Listed:
    """What a claim on the folder (claim.py) listed and read already, so that finished_shards asks for it once."""

    stamps: Dict[str, str]  # {name: stamp} of the folder's files
    recorded: Dict[str, str]  # {name: stamp} of the state folder's files
    records: Dict[str, bytes]  # state records read, by their path in the folder


def finished_shards(out: Storage, ks: Iterable[int], listed: Optional[Listed] = None) -> Dict[int, ShardRecord]:
    """The shards among `ks` that are complete, with their records.

    A shard is complete when its record is there and the storage's stamp of its tar is the one the record
    holds: two listings (one request per 1,000 objects on S3) and the records read in parallel, instead of
    two requests per shard. Records written before stamps are checked by size and sha256 (in parallel) and
    rewritten with their stamp, so the next rerun lists them too. `listed`: what the claim listed and read.
    """
    ks = list(ks)
    if not ks:
        return {}
    stamps, recorded = (listed.stamps, listed.recorded) if listed else (out.listing(), out.listing(STATE_DIR))
    wanted = [k for k in ks if f"{shard_name(k)}.msgpack" in recorded]
    known = listed.records if listed else {}
    found = out.read_many(state_path(k) for k in wanted if state_path(k) not in known)
    found.update({state_path(k): known[state_path(k)] for k in wanted if state_path(k) in known})
    done, unstamped = {}, []
    for k in wanted:
        record = ShardRecord.from_bytes(found[state_path(k)])
        if record is None or record.name != shard_name(k):
            continue
        if record.files == 0 or (record.stamp is not None and stamps.get(record.name) == record.stamp):
            done[k] = record
        elif record.stamp is None and record.name in stamps:
            unstamped.append((k, record))
    with ThreadPoolExecutor(8) as pool:
        matching = list(pool.map(lambda kr: out.matches(kr[1].name, kr[1].bytes, kr[1].sha256), unstamped))
    for (k, record), ok in zip(unstamped, matching):
        if ok:
            done[k] = dataclasses.replace(record, stamp=stamps[record.name])
            out.write(state_path(k), done[k].to_bytes())
    return done


class _Measuring:
    """Stands where a storage writer would in a dry run: takes the pieces, writes nothing."""

    def write(self, data: Any) -> None:
        pass

    def commit(self, sha256: Optional[str] = None) -> str:
        return ""

    def discard(self) -> None:
        pass


def write_shard(out: Storage, k: int, results: Iterable[Union[FileResult, BadInput]],
                dry_run: bool = False) -> ShardRecord:
    """Shard k of the plan from its files' results (consumed one by one: a file's pieces are written and
    dropped before the next is computed), then its state record. `dry_run`: measure, write nothing."""
    name, digest, writing = shard_name(k), hashlib.sha256(), None
    report: List[Dict[str, str]] = []
    index: List[Dict[str, Any]] = []
    size = frames = stat_frames = 0
    seconds, total, total_sq, sha256, stamp = 0.0, None, None, None, None
    try:
        for result in results:
            if isinstance(result, BadInput):
                report.append(report_row(result))
                continue
            if writing is None:
                writing = _Measuring() if dry_run else out.create(name)
            start, members = size, hashlib.blake2b(digest_size=DIGEST_BYTES)  # the file's bytes alone: random access
            for piece in result.members:
                digest.update(piece)
                members.update(piece)
                writing.write(piece)
                size += memoryview(piece).nbytes
            frames += result.index["frames"]
            stat_frames += result.index["frames"] if result.stat_frames is None else result.stat_frames
            seconds += result.seconds
            total = result.sum if total is None else total + result.sum
            total_sq = result.sumsq if total_sq is None else total_sq + result.sumsq
            index.append(dict(result.index, shard=name, member=[start, size - start, members.digest()]))
        if writing is not None:
            end = tar_end(size)
            digest.update(end)
            writing.write(end)
            size += len(end)
            sha256 = digest.hexdigest()
            stamp = writing.commit(sha256)
    except BaseException:
        if writing is not None:
            writing.discard()
        raise
    sums = None if total is None or total_sq is None else ([float(v) for v in total], [float(v) for v in total_sq])
    record = ShardRecord(name, len(index), frames, seconds, size, sha256, sums and sums[0], sums and sums[1],
                         index, report, stamp, stat_frames if stat_frames != frames else None)
    if not dry_run:
        out.write(state_path(k), record.to_bytes())
    return record


def finalize(out: Storage, records: List[ShardRecord], features: FeatureConfig, with_audio: bool,
             rejected_early: List[Dict[str, str]], segments: Tuple[int, int],
             labelset: Optional[Set[str]] = None) -> Dict[str, Any]:
    """Index, then manifest last: a reader never sees a manifest naming a shard that is not there. Its labelmap
    (frame labels' numbers) is vak's over the `labelset` when there is one, else over the interval names seen;
    null when one is named "background", which frame labels keep for 0 (the reader refuses those, nothing else)."""
    report = sorted(rejected_early + [row for r in records for row in r.report], key=lambda row: row["path"])
    good = [r for r in records if r.files]
    if not good:
        raise SpgError(nothing_usable(len(report), report, "every file was rejected"))
    index = [row for r in good for row in r.index]
    vocabs = vocabularies(row["metadata"] for row in index)
    index_bytes = encode_index(index, [k for k, r in enumerate(good) for _ in r.index], vocabs)
    manifest = _manifest(good, len(index), features, with_audio)
    if any("offset" in row for row in index):  # long files in segments: what a reader's windows may be
        manifest["segments"] = {"frames": segments[0], "overlap": segments[1]}
        manifest["format_version"] = SEGMENTED_FORMAT_VERSION
    names = labelset if labelset is not None else {name for row in index for name in row["intervals"]}
    try:
        manifest["labelmap"] = labelmap(names)
    except ValueError:  # a label named "background"
        manifest["labelmap"] = None
    manifest.update(
        labels={key: [to_json(v) for v in vocab] for key, vocab in vocabs.items() if len(vocab) <= MAX_VOCABULARY},
        free_form=[key for key, vocab in vocabs.items() if len(vocab) > MAX_VOCABULARY],
        index=INDEX_NAME, index_sha256=hashlib.sha256(index_bytes).hexdigest(), index_bytes=len(index_bytes),
        report={"counts": count_kinds(report), "files": report})
    out.write(INDEX_NAME, index_bytes)
    out.write(MANIFEST_NAME, json_bytes(manifest))
    return manifest


def _manifest(good: List[ShardRecord], files: int, features: FeatureConfig, with_audio: bool) -> Dict[str, Any]:
    frames = sum(r.frames for r in good)
    stat_frames = sum(r.frames if r.stat_frames is None else r.stat_frames for r in good)
    mean = np.asarray([r.sum for r in good], dtype=np.float64).sum(axis=0) / stat_frames
    std = np.sqrt(np.maximum(np.asarray([r.sumsq for r in good], dtype=np.float64).sum(axis=0) / stat_frames - mean**2,
                             0.0))
    seconds = sum(r.seconds for r in good)
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"spgdataset {__version__}",
        "features": features.to_dict(),
        "params": features.fingerprint(),
        "with_audio": with_audio,
        "shards": [{k: getattr(r, k) for k in ("name", "files", "frames", "seconds", "bytes", "sha256")} for r in good],
        "totals": {"files": files, "frames": frames, "seconds": seconds, "hours": seconds / 3600,
                   "bytes": sum(r.bytes for r in good), "shards": len(good)},
        "stats": {"frames": stat_frames, "mean": mean.tolist(), "std": std.tolist()},
    }
