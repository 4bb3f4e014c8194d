"""The output side of a run: claiming the folder, writing shards and their state records, finishing.

Each shard is written (hashed member by member, never joined in memory) under a temporary name and renamed
when complete (storage/), then recorded in `.spg-state/`. When every shard of the plan is recorded, the
index and then manifest.json (last) are written: a reader never sees a manifest naming a missing shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import queue
import threading
from typing import Any, Dict, List, Optional, Union

import numpy as np

from ..errors import BadInput, SpgError
from ..format.codec import pack, unpack
from ..format.features import FeatureConfig
from ..format.index import MAX_VOCABULARY
from ..format.index import encode as encode_index
from ..format.names import FORMAT_VERSION, INDEX_NAME, MANIFEST_NAME, ROWS_INDEX_NAME, STATE_DIR, shard_name
from ..format.tar import tar_end
from ..rules.labels import to_json, vocabularies
from ..storage import output_for
from ..version import __version__
from .featurize import FileResult
from .report import count_kinds, nothing_usable, report_row


@dataclasses.dataclass
class ShardRecord:
    """What `.spg-state/shard-NNNNNN.tar.msgpack` says of a finished shard (files == 0: all were bad)."""

    name: str
    files: int
    frames: int
    seconds: float
    bytes: int
    sha256: Optional[str]
    sum: Optional[List[float]]  # per mel bin, over the shard's frames
    sumsq: Optional[List[float]]
    index: List[Dict[str, Any]]  # index rows of its files
    report: List[Dict[str, str]]  # report rows of its bad files

    @classmethod
    def from_bytes(cls, data: bytes) -> "ShardRecord":
        return cls(**unpack(data))


def state_path(k: int) -> str:
    """The state record of shard k, relative to OUTPUT_DIR."""
    return f"{STATE_DIR}/{shard_name(k)}.msgpack"


def json_bytes(obj: Any) -> bytes:
    """Strict JSON (no NaN or Infinity, which other languages' parsers refuse)."""
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


def claim_output(output_dir: str, fingerprint: str, overwrite: bool, clean_temporaries: bool) -> None:
    """Refuse to mix two different jobs in one folder unless asked to overwrite.

    Creates the folder (local) or checks the bucket (S3); removes what a killed run left half-written
    (temporary files; unfinished multipart uploads), unless other parts of a split run may be writing.
    """
    out = output_for(output_dir)
    out.prepare(clean_temporaries)
    marker = f"{STATE_DIR}/run.json"
    previous = out.read(marker)
    if previous is not None:
        if json.loads(previous.decode("utf-8")).get("fingerprint") == fingerprint:
            return
        if not overwrite:
            raise SpgError(f"{output_dir}: holds shards of a different job (other inputs or parameters); "
                           "use a new output folder or --overwrite")
    elif any(name.startswith("shard-") for name in out.names()) and not overwrite:
        raise SpgError(f"{output_dir}: holds shards not written by spg-shard's state; use --overwrite")
    if overwrite:
        for name in out.names():
            if name.startswith("shard-") or name in (MANIFEST_NAME, INDEX_NAME, ROWS_INDEX_NAME):
                out.remove(name)
        for name in out.names(STATE_DIR):
            out.remove(f"{STATE_DIR}/{name}")
    out.write(marker, json_bytes({"fingerprint": fingerprint, "spgdataset": __version__}))


def shard_done(output_dir: str, k: int) -> bool:
    """A shard is done when its record exists and its tar (if any) is there with the recorded size and
    sha256 (local: hashed again; S3: the object's size and the sha256 stored with it at upload)."""
    out = output_for(output_dir)
    data = out.read(state_path(k))
    if data is None:
        return False
    record = ShardRecord.from_bytes(data)
    return record.files == 0 or out.matches(record.name, record.bytes, record.sha256)


def write_shard(output_dir: str, k: int, results: List[Union[FileResult, BadInput]]) -> None:
    """Shard k of the plan from its files' results, then its state record."""
    good = [r for r in results if not isinstance(r, BadInput)]
    record = ShardRecord(
        name=shard_name(k), files=len(good), frames=sum(r.index["frames"] for r in good),
        seconds=sum(r.seconds for r in good), bytes=0, sha256=None,
        sum=[float(v) for v in np.sum([r.sum for r in good], axis=0)] if good else None,
        sumsq=[float(v) for v in np.sum([r.sumsq for r in good], axis=0)] if good else None,
        index=[dict(r.index, shard=shard_name(k)) for r in good],
        report=[report_row(r) for r in results if isinstance(r, BadInput)])
    out = output_for(output_dir)
    if good:
        parts = [m for r in good for m in r.members]
        size = sum(len(m) for m in parts)
        parts.append(tar_end(size))
        digest = hashlib.sha256()
        for part in parts:  # hashed and written piece by piece: the shard is never joined in memory
            digest.update(part)
        record.bytes, record.sha256 = size + len(parts[-1]), digest.hexdigest()
        out.write(record.name, *parts, sha256=record.sha256)
    out.write(state_path(k), pack(dataclasses.asdict(record)))


class ShardWriter:
    """Writes finished shards in order in a background thread, with at most one more shard waiting.

    Why: hashing, writing and fsync release the GIL, so here they overlap with computing the next files
    (workers=1) or collecting the workers' results, instead of stalling them (tools/bench.py, write side).
    Memory: at most two shards besides the one being collected. A failed write (disk full, S3) is raised
    in the caller at its next submit() or at close(); nothing after it is written.
    """

    _STOP = None

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.waiting: "queue.Queue" = queue.Queue(maxsize=1)
        self.error: Optional[BaseException] = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="spg-shard-writer", daemon=True)
        self.thread.start()

    def submit(self, k: int, results: List[Union[FileResult, BadInput]]) -> None:
        self._raise()
        self.waiting.put((k, results))

    def close(self) -> None:
        """Wait until every submitted shard is written; raise the first failure."""
        self.waiting.put(self._STOP)
        self.thread.join()
        self._raise()

    def stop(self) -> None:
        """After a failure elsewhere: write nothing more, wait for the write under way (no half files)."""
        self.stopped = True
        while self.thread.is_alive():
            try:
                self.waiting.put(self._STOP, timeout=0.1)
            except queue.Full:
                continue
            self.thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            self.stopped = True
            raise error

    def _run(self) -> None:
        while True:
            item = self.waiting.get()
            if item is self._STOP:
                return
            if self.stopped or self.error is not None:
                continue
            try:
                write_shard(self.output_dir, *item)
            except BaseException as exc:  # handed to the caller's thread
                self.error = exc


class MeasuringSink:
    """In a dry run, stands where the ShardWriter would: adds up the bytes each shard would take."""

    def __init__(self) -> None:
        self.bytes = self.shards = 0

    def submit(self, k: int, results: List[Union[FileResult, BadInput]]) -> None:
        size = sum(len(m) for r in results if not isinstance(r, BadInput) for m in r.members)
        if size:
            self.bytes += size + len(tar_end(size))
            self.shards += 1

    def close(self) -> None:
        pass

    def stop(self) -> None:
        pass


def finalize(output_dir: str, shard_count: int, features: FeatureConfig, with_audio: bool,
             rejected_early: List[Dict[str, str]]) -> Dict[str, Any]:
    """Index, then manifest last: a reader never sees a manifest naming a shard that is not there."""
    out = output_for(output_dir)
    records = []
    for k in range(shard_count):
        data = out.read(state_path(k))
        if data is None:
            raise SpgError(f"{output_dir}: state record {state_path(k)} disappeared; rerun to rewrite that shard")
        records.append(ShardRecord.from_bytes(data))
    report = sorted(rejected_early + [row for r in records for row in r.report], key=lambda row: row["path"])
    good = [r for r in records if r.files]
    if not good:
        raise SpgError(nothing_usable(len(report), report, "every file was rejected"))
    index = [row for r in good for row in r.index]
    vocabs = vocabularies(row["metadata"] for row in index)
    index_bytes = encode_index(index, [k for k, r in enumerate(good) for _ in r.index], vocabs)
    manifest = _manifest(good, len(index), features, with_audio)
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
    mean = np.sum([r.sum for r in good], axis=0) / frames
    std = np.sqrt(np.maximum(np.sum([r.sumsq for r in good], axis=0) / frames - mean**2, 0.0))
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
        "stats": {"frames": frames, "mean": mean.tolist(), "std": std.tolist()},
    }
