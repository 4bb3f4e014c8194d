"""spg-shard's job: audio files -> log-mel WebDataset shards + manifest.json + file index.

How a run goes, and why:
1. Collect and check the inputs (inputs.py); probe each file's header for its length (plan.py).
2. Plan the shards from those lengths alone (bytes and file limits), before any audio is decoded.
   The plan fixes which file goes into which shard, so the output is the same whatever the worker
   count, a killed run knows which shards are finished, and `--part i/N` jobs agree without talking.
3. Workers compute spectrograms in tasks of about a minute of audio (pool.py, featurize.py); in plan order,
   a writer thread of the main process hashes and writes each finished shard and records it (shards.py).
4. When every shard of the plan is recorded, write the index and then manifest.json (last).
OUTPUT_DIR is a local folder or `s3://bucket/prefix` (storage/): the same steps, with objects for files.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import BadInput, SpgError
from ..format.features import FeatureConfig
from .inputs import collect_inputs
from .plan import PlannedFile, plan_shards, probe_all, run_fingerprint
from .pool import featurize_all
from .progress import Progress
from .report import describe, nothing_usable, report_row
from .shards import MeasuringSink, ShardWriter, claim_output, finalize, shard_done

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
    labelset: Optional[Mapping[str, Sequence[Any]]] = None,
    workers: Optional[int] = None,
    part: Optional[Tuple[int, int]] = None,
    overwrite: bool = False,
    progress: bool = True,
    allow_outside_root: bool = False,
    dry_run: bool = False,
) -> WriteResult:
    """Write the shards of `audio_root` (+ optional metadata.json) into `output_dir`; resumes by default.

    `files`: paths (relative to `audio_root`) to take instead of the metadata keys or a folder walk.
    `part=(i, n)`: write only shards i, i+n, i+2n, ... (for job arrays); the part that completes the
    set writes the manifest. `workers`: processes computing spectrograms (default: all cores).
    `allow_outside_root`: take input names that lead outside `audio_root` (`../x.wav`, an absolute path, a
    symlink out of it), which are otherwise refused and reported.
    `dry_run`: check everything (every file decoded and featurised, as a run does, so the report is the one a
    run would give) and add up the bytes the shards would take, but write nothing, not even the folder.
    """
    features = features or FeatureConfig()
    started = time.monotonic()
    output_dir = os.fspath(output_dir)
    if max_shard_bytes is None and max_shard_files is None:
        raise ValueError("give max_shard_bytes and/or max_shard_files")
    workers = max(1, workers or os.cpu_count() or 1)
    part_index, part_count = part or (0, 1)
    if not 0 <= part_index < part_count:
        raise ValueError(f"part must be i/N with 0 <= i < N, got {part_index}/{part_count}")
    planned, reported = _checked_inputs(audio_root, metadata_path, files, labelset, allow_outside_root, features,
                                        workers, progress)
    plan = plan_shards(planned, features, with_audio, max_shard_bytes, max_shard_files)
    mine = [k for k in range(len(plan)) if k % part_count == part_index]
    if dry_run:
        sink = MeasuringSink()
        processed, seconds, bad = _write_pending(sink, plan, mine, features, with_audio, workers, reported, progress)
        return WriteResult(output_dir, None, 0, 0, processed, seconds, time.monotonic() - started,
                           sorted((report_row(b) for b in reported + bad), key=lambda row: row["path"]),
                           dry_run=True, expected_bytes=sink.bytes)
    claim_output(output_dir, run_fingerprint(plan, features, with_audio), overwrite, part_count == 1)
    pending = [k for k in mine if not shard_done(output_dir, k)]
    processed, seconds, _ = _write_pending(ShardWriter(output_dir), plan, pending, features, with_audio, workers,
                                           reported, progress)
    rejected_early = [report_row(bad) for bad in reported]
    manifest = None
    if all(k in mine or shard_done(output_dir, k) for k in range(len(plan))):  # mine are checked or just written
        manifest = finalize(output_dir, len(plan), features, with_audio, rejected_early)
    return WriteResult(output_dir, manifest, len(pending), len(mine) - len(pending), processed, seconds,
                       time.monotonic() - started, manifest["report"]["files"] if manifest else rejected_early,
                       expected_bytes=manifest["totals"]["bytes"] if manifest else 0)


def _checked_inputs(audio_root: Any, metadata_path: Any, files: Optional[Sequence[str]], labelset: Any,
                    allow_outside_root: bool, features: FeatureConfig, workers: int,
                    progress: bool) -> Tuple[List[PlannedFile], List[BadInput]]:
    """Step 1 of the module docstring: the files whose headers read, and what was reported on the way."""
    reporter = Progress(0, 0.0, enabled=progress)
    entries, reported = collect_inputs(audio_root, metadata_path, files, labelset, allow_outside_root)
    if not entries:
        raise SpgError(nothing_usable(len(reported), reported, "no audio files to shard"))
    reported += [BadInput(e.path, warning, kind="warning") for e in entries for warning in e.warnings]
    planned, unreadable = probe_all(entries, features, workers)
    reported += unreadable
    for bad in reported:
        reporter.message(describe(bad))
    if not planned:
        raise SpgError(nothing_usable(len(entries), reported, "no readable audio"))
    return planned, reported


def _write_pending(shard_writer: Any, plan: List[List[PlannedFile]], pending: List[int], features: FeatureConfig,
                   with_audio: bool, workers: int, reported: List[BadInput],
                   progress: bool) -> Tuple[int, float, List[BadInput]]:
    """Featurise the shards `pending` and hand each to `shard_writer` (a ShardWriter, or a MeasuringSink in a
    dry run), with a progress line; (files processed, audio seconds, the files found bad)."""
    work = [item for k in pending for item in plan[k]]
    reporter = Progress(len(work), sum(p.seconds for p in work), enabled=progress)
    reporter.bad = sum(bad.kind == "bad" for bad in reported)
    reporter.filtered = sum(bad.kind == "filtered" for bad in reported)
    processed, seconds, bad = 0, 0.0, []
    results = featurize_all(work, features, with_audio, workers)
    try:
        for k in pending:
            shard_results = []
            for _ in plan[k]:
                result = next(results)
                shard_results.append(result)
                if isinstance(result, BadInput):
                    reporter.message(describe(result))
                    reporter.update(files=1, bad=1)
                    bad.append(result)
                else:
                    reporter.update(files=1, seconds=result.seconds)
                    seconds += result.seconds
                processed += 1
            shard_writer.submit(k, shard_results)
        shard_writer.close()
    finally:  # stop the pool now: a reference cycle through write_shards' frame would keep it to exit
        shard_writer.stop()
        results.close()
    reporter.close()
    return processed, seconds, bad
