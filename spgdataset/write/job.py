"""spg-shard's job: audio files -> spectrogram WebDataset shards + manifest.json + file index.

How a run goes, and why:
1. Collect and check the inputs (inputs.py); read each file's header for its length (headers.py: in the
   workers, and only for files that are new or changed since the last run into the same OUTPUT_DIR).
2. Plan the shards from those lengths alone (bytes and file limits), before any audio is decoded.
   The plan fixes which file goes into which shard, so the output is the same whatever the worker count or
   the cluster, a killed run knows which shards are finished, and `--part i/N` jobs agree without talking.
3. One task per shard (tasks.py), run by local worker processes (executors.py) or a Dask cluster
   (cluster.py): it computes its files' spectrograms and writes the shard and its state record itself.
4. When every shard of the plan is recorded, write the index and then manifest.json (last).
OUTPUT_DIR is a local folder or `s3://bucket/prefix` (storage/): the same steps, with objects for files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from ..errors import BadInput, SpgError
from ..format.features import FeatureConfig
from .. import storage
from ..storage import Storage, is_s3_url
from .annotated import attach_annotations
from .annotations import labelset_to_set
from .executors import local_executor
from .headers import HeaderCache, read_headers
from .inputs import collect_inputs
from .plan import (SEGMENT_OVERLAP_SECONDS, SEGMENT_SECONDS, PlannedFile, plan_files, plan_shards, run_fingerprint,
                   segment_frames)
from .progress import Progress
from .report import describe, nothing_usable, report_row
from .claim import Claim, Contents, check_free, claimed
from .shards import ShardRecord, finalize, finished_shards
from .tasks import shard_task

DEFAULT_MAX_SHARD_BYTES = 32 * 2**20


@dataclasses.dataclass
class WriteResult:
    """What a run did. `manifest` is None when other parts of a split run are still missing."""

    output_dir: str
    manifest: Optional[Dict[str, Any]]
    shards_written: int
    shards_reused: int
    files_processed: int
    audio_seconds_processed: float
    wall_seconds: float
    rejected: List[Dict[str, str]]
    dry_run: bool = False
    expected_bytes: int = 0  # what the shards take (a dry run: what they would take)
    headers_read: int = 0  # headers read from the audio files (the others were known from an earlier run)


@dataclasses.dataclass
class _Run:
    """One call's settings, as the stages need them."""

    output_dir: str
    out: Storage  # output_dir's storage, with the S3 settings of this call: what the shard tasks write through
    features: FeatureConfig
    with_audio: bool
    progress: bool
    executor: Any
    part: Tuple[int, int]  # (i, N): this run writes shards i, i + N, ...
    segments: Tuple[int, int] = (0, 0)  # frames a long file's segment owns, and holds beyond them
    report_files: bool = True  # a line per file left out (progress, or a dry run: its report is its output)
    labelset: Optional[Set[str]] = None  # vak's labelset: the manifest's labelmap (else the interval names seen)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def mine(self, plan: List[List[PlannedFile]]) -> List[int]:
        return [k for k in range(len(plan)) if k % self.part[1] == self.part[0]]


def write_shards(
    audio_root: Union[str, os.PathLike],
    metadata_path: Optional[Union[str, os.PathLike]],
    output_dir: Union[str, os.PathLike],
    *,
    files: Optional[Sequence[str]] = None,
    features: Optional[FeatureConfig] = None,
    with_audio: bool = False,
    max_shard_bytes: Optional[int] = DEFAULT_MAX_SHARD_BYTES,
    max_shard_files: Optional[int] = None,
    labelset: Union[str, Sequence[Any], None] = None,
    keep: Optional[Mapping[str, Sequence[Any]]] = None,
    annot_format: Optional[str] = None,
    annotations: Optional[Mapping[str, Union[str, os.PathLike]]] = None,
    audio_format: Optional[str] = None,
    workers: Optional[int] = None,
    part: Optional[Tuple[int, int]] = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
    dry_run: bool = False,
    client: Any = None,
    segments: Tuple[float, float] = (SEGMENT_SECONDS, SEGMENT_OVERLAP_SECONDS),
    wait: bool = False,
) -> WriteResult:
    """Write the shards of `audio_root` (+ optional metadata.json) into `output_dir`; resumes by default.

    One run writes into `output_dir` at a time (claim.py): another is refused, or with `wait=True` waits.
    Someone else's folder (or `audio_root`) is refused. The output is the same whoever computes it.

    Args:
        audio_root: the folder of audio files; every input path is inside it.
        metadata_path: metadata.json ({path: {"intervals": ..., "metadata": ..., "length": ...}}), or None to walk
            `audio_root`.
        output_dir: a folder or s3://bucket/prefix, empty or holding spgdataset's own files.
        files: paths (relative to `audio_root`) to take instead of the metadata keys or a folder walk.
        features: the spectrogram's parameters (default: 80-mel log-mel at 16 kHz, hop 160).
        with_audio: store each file's audio too (FLAC, at the feature rate), for readers that want it.
        max_shard_bytes, max_shard_files: a shard closes when either is reached.
        labelset: vak's ("abc", a list): files with other labels are skipped.
        keep: {key: values}: only files whose metadata[key] is one of the values.
        annot_format: "simple-seq", "aud-seq" or "textgrid": each file's annotation, beside it or from
            `annotations` ({stored path: annotation file}), its labels as interval names.
        audio_format: "wav": only .wav files.
        workers: local processes computing spectrograms (default: all cores).
        part: (i, n): write only shards i, i+n, i+2n, ... (job arrays); the part that completes the set writes
            the manifest.
        overwrite: write every shard again (removing only spgdataset's own files).
        progress: the progress line on stderr (files, audio hours, throughput, ETA), and a line per file left
            out (False: none, except in a dry run; the result and manifest.json's report list them).
        allow_outside_root: take input names leading outside `audio_root` (`../x.wav`, a symlink out).
        dry_run: check everything (every file decoded and featurised, as a run does: the report a run would give)
            and add up the bytes the shards would take, but write nothing.
        client: a `dask.distributed.Client`; its cluster's workers then read the headers and write the shards
            (they must see `audio_root` and `output_dir`: a shared file system, or s3://).
        segments: (seconds, overlap): longer files are stored in segments owning `seconds` and holding `overlap`
            more.
        wait: wait for another run writing here instead of refusing.
    """
    selection = _Selection.of(keep, labelset, annot_format, annotations, audio_format, allow_outside_root)
    part_index, part_count = _checked_part(part, max_shard_bytes, max_shard_files)
    audio_root, output_dir, out = _paths(audio_root, output_dir, client)
    executor = _executor(workers, client, [audio_root] + ([] if dry_run else [_seen_from(output_dir)]))
    features = features or FeatureConfig()
    run = _Run(output_dir, out, features, with_audio, progress, executor, (part_index, part_count),
               segment_frames(features, *segments), progress or dry_run, selection.labels)
    try:
        # a missing bucket or someone else's folder is said before any header is read
        surveyed = None if dry_run else check_free(run.out, run.output_dir)
        with _paused_gc():
            planned, reported, headers = _checked_inputs(run, audio_root, metadata_path, files, selection)
            plan = plan_shards(planned, run.features, with_audio, max_shard_bytes, max_shard_files)
        if dry_run:
            return _dry_run(run, plan, reported, headers.count)
        return _write(run, plan, reported, headers, overwrite, wait, surveyed)
    finally:
        executor.close()
        gc.unfreeze()


def _paths(audio_root: Any, output_dir: Any, client: Any) -> Tuple[str, str, Storage]:
    """The audio folder and the output as the run names them, and the output's storage (with the S3 settings that
    apply now: configure() over the environment)."""
    audio_root, output_dir = os.fspath(audio_root), os.fspath(output_dir)
    if client is not None:  # a worker's working directory is not this one's
        audio_root = os.path.abspath(audio_root)
        output_dir = output_dir if is_s3_url(output_dir) else os.path.abspath(output_dir)
    _check_places(audio_root, output_dir)
    return audio_root, output_dir, storage.at(output_dir)


def _seen_from(output_dir: str) -> str:
    """What a Dask worker must see of the output: its folder, or where it will be made."""
    return output_dir if is_s3_url(output_dir) or os.path.isdir(output_dir) else os.path.dirname(output_dir)


def _check_places(audio_root: str, output_dir: str) -> None:
    """The shards never go into the audio folder itself: its files are the user's, not this run's."""
    if not is_s3_url(output_dir) and os.path.realpath(output_dir) == os.path.realpath(audio_root):
        raise SpgError(f"{output_dir}: is the audio folder; shards go into a folder of their own (e.g. "
                       f"{os.path.join(os.path.dirname(os.path.realpath(audio_root)), 'shards')})")


def _checked_part(part: Optional[Tuple[int, int]], max_bytes: Optional[int],
                  max_files: Optional[int]) -> Tuple[int, int]:
    """`part` as (i, N), after the shard limits and the part are checked: exact ints (not bools or floats: nan or
    True would pass for a number further on) in range, each error naming its argument."""
    limit = 2**63 - 1  # what a count stored in the state records and the index can be

    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if max_bytes is None and max_files is None:
        raise ValueError("give max_shard_bytes and/or max_shard_files")
    for name, value in (("max_shard_bytes", max_bytes), ("max_shard_files", max_files)):
        if value is not None and not (whole(value) and 1 <= value <= limit):
            raise ValueError(f"{name} must be None or an int in [1, {limit}], got {value!r}")
    if part is None:
        return 0, 1
    if not (isinstance(part, (tuple, list)) and len(part) == 2 and all(whole(v) for v in part)
            and 0 <= part[0] < part[1] <= limit):
        raise ValueError(f"part must be (i, N): two ints with 0 <= i < N (this run writes part i of N), got {part!r}")
    return part[0], part[1]


def _write(run: _Run, plan: List[List[PlannedFile]], reported: List[BadInput], headers: "_Headers",
           overwrite: bool, wait: bool, surveyed: Optional[Contents]) -> WriteResult:
    """Steps 3 and 4 of the module docstring, holding the folder (claim.py); resumes what is finished."""
    out, mine = run.out, run.mine(plan)
    with claimed(out, run.output_dir, run.part, wait, surveyed) as claim:
        claim.settle(run_fingerprint(plan, run.features, run.with_audio), overwrite, _owned_by(*run.part))
        headers.save(out)
        records = finished_shards(out, mine, claim.listed())
        pending = [k for k in mine if k not in records]
        records.update(_write_pending(run, plan, pending, reported, dry_run=False))
        records.update(finished_shards(out, [k for k in range(len(plan)) if k not in records]))  # other parts'
        return _finish(run, claim, plan, records, pending, reported, headers.count)


def _executor(workers: Optional[int], client: Any, paths: List[str]) -> Any:
    if client is None:
        return local_executor(max(1, workers or os.cpu_count() or 1))
    from .cluster import DaskExecutor  # dask is an extra

    return DaskExecutor(client, paths)


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """Inputs and plan are millions of small objects that live to the end of the run. Collections triggered
    by their allocation took half of the input checks' time, and later ones, walking them again and again,
    a tenth of the spectrograms' (they free nothing): collection is off while they are made, and they are
    frozen out of it (gc.freeze, also what keeps forked workers from copying their pages) until the end."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _owned_by(part_index: int, part_count: int) -> Callable[[str], bool]:
    """Which names' leftovers (temporary files, unfinished uploads) a run may clean: all of them in a single
    run; in a split run only its own shards' and their records' (another part may be writing the others)."""
    if part_count == 1:
        return lambda name: True

    def owned(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        if not base.startswith("shard-"):
            return False
        return base[6:12].isdigit() and int(base[6:12]) % part_count == part_index

    return owned


@dataclasses.dataclass
class _Headers:
    """The headers of a run's inputs, to save with its state once it has claimed the folder."""

    cache: HeaderCache
    entries: List[Any]
    stats: List[Any]
    found: List[Any]
    count: int  # read from the files in this run

    def save(self, out: Storage) -> None:
        if self.count:
            self.cache.save(out, self.entries, self.stats, self.found)


@dataclasses.dataclass(frozen=True)
class _Selection:
    """Which inputs a run takes, beyond the files listed: write_shards()'s filters and annotation options."""

    keep: Optional[Mapping[str, Sequence[Any]]]
    labels: Optional[Set[str]]  # vak's labelset
    annot_format: Optional[str]
    annotations: Optional[Mapping[str, Any]]
    audio_format: Optional[str]
    allow_outside_root: bool

    @classmethod
    def of(cls, keep: Any, labelset: Any, annot_format: Optional[str], annotations: Any, audio_format: Optional[str],
           allow_outside_root: bool) -> "_Selection":
        if isinstance(labelset, Mapping):  # its meaning before 0.3
            warnings.warn("write_shards(labelset={key: values}) filters by metadata: that is keep= now; labelset is "
                          "vak's set of annotation labels", DeprecationWarning, stacklevel=3)
            keep, labelset = labelset, None
        return cls(keep, labelset_to_set(labelset) if labelset is not None else None, annot_format, annotations,
                   audio_format, allow_outside_root)

    def __post_init__(self) -> None:
        if self.annot_format is None and (self.labels is not None or self.annotations is not None):
            raise SpgError("labelset and annotations need annot_format (simple-seq, aud-seq or textgrid); "
                           "to keep files by metadata values use keep={key: [values]}")


def _checked_inputs(run: _Run, audio_root: Any, metadata_path: Any, files: Optional[Sequence[str]],
                    selection: _Selection) -> Tuple[List[PlannedFile], List[BadInput], _Headers]:
    """Step 1 of the module docstring: the files whose headers read, and what was reported on the way."""
    reporter = Progress(0, 0.0, enabled=run.progress, messages=run.report_files)
    entries, reported = collect_inputs(audio_root, metadata_path, files, selection.keep, selection.allow_outside_root,
                                       selection.audio_format)
    if selection.annot_format is not None:
        entries, unannotated = attach_annotations(entries, selection.annot_format, selection.annotations,
                                                  selection.labels, audio_root, selection.allow_outside_root)
        reported += unannotated
    if not entries:
        raise SpgError(nothing_usable(len(reported), reported, "no audio files to shard"))
    reported += [BadInput(e.path, warning, kind="warning") for e in entries for warning in e.warnings]
    cache = HeaderCache.load(run.out)
    found, stats, count = read_headers(entries, run.executor, cache, run.progress)
    planned, unreadable = plan_files(entries, found, run.features, run.segments)
    reported += unreadable
    for bad in reported:
        reporter.message(describe(bad))
    if not planned:
        raise SpgError(nothing_usable(len(entries), reported, "no readable audio"))
    return planned, reported, _Headers(cache, entries, stats, found, count)


def _write_pending(run: _Run, plan: List[List[PlannedFile]], pending: List[int], reported: List[BadInput],
                   dry_run: bool) -> Dict[int, ShardRecord]:
    """One task per shard of `pending`, with a progress line; their records."""
    reporter = Progress(sum(len(plan[k]) for k in pending), sum(p.seconds for k in pending for p in plan[k]),
                        enabled=run.progress, bad=sum(bad.kind == "bad" for bad in reported),
                        filtered=sum(bad.kind == "filtered" for bad in reported), messages=run.report_files)
    jobs = [(f"spg-shard-{k:06d}", (run.out, k, plan[k], run.features, run.with_audio, dry_run)) for k in pending]
    records = {}
    for number, record in run.executor.run(shard_task, jobs):
        k = pending[number]
        for row in record.report:
            reporter.message(describe(BadInput(row["path"], row["problem"], row["kind"])))
        reporter.update(files=len(plan[k]), seconds=record.seconds, bad=len(record.report))
        records[k] = record
    reporter.close()
    return records


def _dry_run(run: _Run, plan: List[List[PlannedFile]], reported: List[BadInput], headers_read: int) -> WriteResult:
    mine = run.mine(plan)
    records = _write_pending(run, plan, mine, reported, dry_run=True)
    rows = [report_row(b) for b in reported] + [row for r in records.values() for row in r.report]
    return WriteResult(run.output_dir, None, 0, 0, sum(len(plan[k]) for k in mine),
                       sum(r.seconds for r in records.values()), time.monotonic() - run.started,
                       sorted(rows, key=lambda row: row["path"]), dry_run=True,
                       expected_bytes=sum(r.bytes for r in records.values()), headers_read=headers_read)


def _finish(run: _Run, claim: Claim, plan: List[List[PlannedFile]], records: Dict[int, ShardRecord],
            pending: List[int], reported: List[BadInput], headers_read: int) -> WriteResult:
    """Step 4 when every shard is recorded (by this run or other parts); the result either way."""
    rejected_early = [report_row(bad) for bad in reported]
    manifest = None
    claim.check()
    if len(records) == len(plan):
        manifest = finalize(claim.out, [records[k] for k in range(len(plan))], run.features, run.with_audio,
                            rejected_early, run.segments, run.labelset)
        claim.clean_when_alone()  # what killed workers left
    processed = sum(len(plan[k]) for k in pending)
    seconds = sum(records[k].seconds for k in pending)
    return WriteResult(run.output_dir, manifest, len(pending), len(run.mine(plan)) - len(pending), processed, seconds,
                       time.monotonic() - run.started, manifest["report"]["files"] if manifest else rejected_early,
                       expected_bytes=manifest["totals"]["bytes"] if manifest else 0, headers_read=headers_read)
