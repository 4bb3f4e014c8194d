"""spg-shard: audio files -> log-mel WebDataset shards + manifest.json + index.msgpack.

How a run goes, and why:
1. Collect and check the inputs (metadata.py); probe each file's header for its length.
2. Plan the shards from those lengths alone (bytes and file limits), before any audio is decoded.
   The plan fixes which file goes into which shard, so the output is the same whatever the worker
   count, a killed run knows which shards are finished, and `--part i/N` jobs agree without talking.
3. Workers compute spectrograms in tasks of about a minute of audio (single-threaded torch each, so
   results do not depend on the thread count) and build the tar members; in plan order, a writer thread
   of the main process hashes and writes each finished `shard-NNNNNN.tar` member by member under a
   temporary name, renames it when complete, then records the shard in `.spg-state/`.
4. When every shard of the plan is recorded, write index.msgpack and then manifest.json (last).
OUTPUT_DIR is a local folder or `s3://bucket/prefix` (s3.S3Output): the same steps, with objects for files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import __version__
from .audio import encode_flac, probe, read_audio
from .errors import BadInput, SpgError
from .features import FeatureConfig, LogMel
from .frames import num_frames, rescale_intervals, resampled_length
from .labels import to_json, vocabularies
from .metadata import FileEntry, collect_inputs
from .progress import Progress
from .s3 import S3Output, is_s3_url
from .shardformat import (AUDIO, FORMAT_VERSION, INDEX_NAME, INFO, MANIFEST_NAME, SPEC, STATE_DIR, npy_header,
                          pack, sample_key, shard_name, tar_end, tar_member, unpack, write_bytes_atomic)

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


@dataclasses.dataclass
class _Planned:
    number: int  # position in the sorted input list; fixes the sample key
    entry: FileEntry
    frames: int  # expected, from the header
    seconds: float


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
) -> WriteResult:
    """Write the shards of `audio_root` (+ optional metadata.json) into `output_dir`; resumes by default.

    `files`: paths (relative to `audio_root`) to take instead of the metadata keys or a folder walk.
    `part=(i, n)`: write only shards i, i+n, i+2n, ... (for job arrays); the part that completes the
    set writes the manifest. `workers`: processes computing spectrograms (default: all cores).
    `allow_outside_root`: take input names that lead outside `audio_root` (`../x.wav`, an absolute path, a
    symlink out of it), which are otherwise refused and reported.
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

    entries, rejected = collect_inputs(audio_root, metadata_path, files, labelset, allow_outside_root)
    if not entries:
        raise SpgError(_nothing_usable(len(rejected), rejected, "no audio files to shard"))
    rejected += [BadInput(e.path, warning, kind="warning") for e in entries for warning in e.warnings]
    reporter = Progress(0, 0.0, enabled=progress)
    for bad in rejected:
        reporter.message(_describe(bad))
    planned = _probe_all(entries, features, workers, rejected, reporter)
    plan = _plan_shards(planned, features, with_audio, max_shard_bytes, max_shard_files)

    state_dir = os.path.join(output_dir, STATE_DIR)
    fingerprint = _run_fingerprint(planned, plan, features, with_audio)
    _claim_output(output_dir, state_dir, fingerprint, overwrite, clean_temporaries=part_count == 1)

    mine = [k for k in range(len(plan)) if k % part_count == part_index]
    pending = [k for k in mine if not _shard_done(output_dir, k)]
    work = [item for k in pending for item in plan[k]]
    reporter = Progress(len(work), sum(p.seconds for p in work), enabled=progress)
    reporter.bad = sum(bad.kind == "bad" for bad in rejected)
    reporter.filtered = sum(bad.kind == "filtered" for bad in rejected)
    written = processed = 0
    processed_seconds = 0.0
    results = _process_all(work, features, with_audio, workers)
    shard_writer = _ShardWriter(output_dir)
    try:
        for k in pending:
            records = []
            for _ in plan[k]:
                result = next(results)
                records.append(result)
                if isinstance(result, BadInput):
                    reporter.message(_describe(result))
                    reporter.update(files=1, bad=1)
                else:
                    reporter.update(files=1, seconds=result["seconds"])
                    processed_seconds += result["seconds"]
                processed += 1
            shard_writer.submit(k, records)
            written += 1
        shard_writer.close()
    finally:  # stop the pool now: a reference cycle through write_shards' frame would keep it to exit
        shard_writer.stop()
        results.close()
    reporter.close()

    rejected_early = [_report_row(bad) for bad in rejected]
    manifest = None
    # mine are checked or just written; only other parts' shards need a look
    if all(k in mine or _shard_done(output_dir, k) for k in range(len(plan))):
        manifest = _finalize(output_dir, len(plan), features, with_audio, rejected_early)
    result = WriteResult(output_dir, manifest, written, len(mine) - len(pending), processed,
                         processed_seconds, time.monotonic() - started,
                         manifest["report"]["files"] if manifest else rejected_early)
    return result


# ---------------------------------------------------------------- planning


def _probe_one(entry: FileEntry, features: FeatureConfig) -> Tuple[int, float]:
    """Expected frames and seconds of one file from its header; checks the metadata length."""
    length, rate = probe(entry.abspath, entry.path)
    if length == 0:
        raise BadInput(entry.path, "audio is empty (0 samples)")
    if entry.length is not None and entry.length != length:
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {length} samples")
    samples = resampled_length(length, rate, features.sample_rate)
    return num_frames(samples, features.hop_length), length / rate


def _probe_task(entries: List[FileEntry], features: FeatureConfig) -> List[Union[Tuple[int, float], BadInput]]:
    outcomes: List[Union[Tuple[int, float], BadInput]] = []
    for entry in entries:
        try:
            outcomes.append(_probe_one(entry, features))
        except BadInput as bad:
            outcomes.append(bad)
    return outcomes


def _probe_all(entries: List[FileEntry], features: FeatureConfig, workers: int,
               rejected: List[BadInput], reporter: Progress) -> List[_Planned]:
    """Header reads add up over a million files. Cached local headers take ~0.1 ms each and threads only
    fight over the GIL (2-3x slower here); headers that wait on storage (over 1 ms each in the first run
    of 64) are read by a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [entries[i : i + 64] for i in range(0, len(entries), 64)]
    started = time.perf_counter()
    probed = _probe_task(runs[0], features)
    if time.perf_counter() - started > 1e-3 * len(runs[0]):
        with ThreadPoolExecutor(max_workers=min(8, 2 * workers)) as pool:
            outcomes = pool.map(_probe_task, runs[1:], itertools.repeat(features))
            probed += [outcome for run in outcomes for outcome in run]
    else:
        probed += [outcome for run in runs[1:] for outcome in _probe_task(run, features)]
    planned = []
    for number, (entry, outcome) in enumerate(zip(entries, probed)):
        if isinstance(outcome, BadInput):
            rejected.append(outcome)
            reporter.message(_describe(outcome))
        else:
            planned.append(_Planned(number, entry, *outcome))
    if not planned:
        raise SpgError(_nothing_usable(len(entries), rejected, "no readable audio"))
    return planned


def _estimated_bytes(item: _Planned, features: FeatureConfig, with_audio: bool) -> int:
    itemsize = 2 if features.storage_dtype == "float16" else 4
    size = 3 * 512 + 256 + 128 + features.n_mels * item.frames * itemsize + 64 * sum(
        len(v) for v in item.entry.intervals.values()) + 64 * len(item.entry.metadata)
    if with_audio:
        size += item.frames * features.hop_length  # FLAC of speech: about one byte per sample
    return size


def _plan_shards(planned: List[_Planned], features: FeatureConfig, with_audio: bool,
                 max_bytes: Optional[int], max_files: Optional[int]) -> List[List[_Planned]]:
    """Greedy packing in path order; a file larger than the limit gets a shard of its own."""
    plan: List[List[_Planned]] = [[]]
    size = 0
    for item in planned:
        estimate = _estimated_bytes(item, features, with_audio)
        full = (max_files is not None and len(plan[-1]) >= max_files) or (
            max_bytes is not None and size + estimate > max_bytes)
        if plan[-1] and full:
            plan.append([])
            size = 0
        plan[-1].append(item)
        size += estimate
    return plan


def _run_fingerprint(planned: List[_Planned], plan: List[List[_Planned]], features: FeatureConfig,
                     with_audio: bool) -> str:
    """Identifies the inputs and arguments, so a rerun into the same folder can tell it is the same job."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, features.to_dict(), with_audio]).encode())
    for k, shard in enumerate(plan):
        for item in shard:
            e = item.entry
            digest.update(json.dumps([k, item.number, e.path, item.frames, e.intervals, e.metadata],
                                     sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _claim_output(output_dir: str, state_dir: str, fingerprint: str, overwrite: bool,
                  clean_temporaries: bool) -> None:
    """Refuse to mix two different jobs in one folder unless asked to overwrite.

    Creates the folder (local) or checks the bucket (S3); removes what a killed run left half-written
    (temporary files; unfinished multipart uploads), unless other parts of a split run may be writing.
    """
    out = _output(output_dir)
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
            if name.startswith("shard-") or name in (MANIFEST_NAME, INDEX_NAME):
                out.remove(name)
        for name in out.names(STATE_DIR):
            out.remove(f"{STATE_DIR}/{name}")
    out.write(marker, _json_bytes({"fingerprint": fingerprint, "spgdataset": __version__}))


# ---------------------------------------------------------------- computing


_LOGMEL: Optional[LogMel] = None


def _init_worker() -> None:
    # One thread per process: results then do not depend on how many threads a run happens to use.
    torch.set_num_threads(1)


def _init_pool_worker(parent: int) -> None:
    """Also exit when the main process is gone (killed with SIGKILL, it cannot tell its workers)."""
    _init_worker()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _logmel(features: FeatureConfig) -> LogMel:
    global _LOGMEL
    if _LOGMEL is None or _LOGMEL.config != features:
        _LOGMEL = LogMel(features)
    return _LOGMEL


def process_file(item: _Planned, features: FeatureConfig, with_audio: bool) -> Dict[str, Any]:
    """Decode, check and featurise one file: returns its tar members and its share of the statistics."""
    entry = item.entry
    audio, orig_rate, orig_length, exact_16bit = read_audio(entry.abspath, features.sample_rate, entry.path)
    if entry.length is not None and entry.length != orig_length:
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {orig_length} samples")
    for name, spans in entry.intervals.items():
        for start, stop in spans:
            if stop > orig_length:
                raise BadInput(entry.path, f"intervals[{name!r}] [{start}, {stop}] ends after the audio's {orig_length} samples")
    if len(audio) < features.min_samples:
        raise BadInput(entry.path, f"audio too short: {len(audio)} samples at {features.sample_rate} Hz, "
                                   f"a centred STFT with n_fft={features.n_fft} needs {features.min_samples}")
    spectrogram = _logmel(features)(audio, features.storage_dtype)
    frames = spectrogram.shape[1]
    stored = torch.from_numpy(spectrogram)
    wide = stored.float() if stored.dtype == torch.float16 else stored.double()  # float16 squares are exact in float32
    total, total_sq = wide.sum(1, dtype=torch.float64).numpy(), wide.square().sum(1, dtype=torch.float64).numpy()
    if not (np.isfinite(total).all() and np.isfinite(total_sq).all()):  # finite sums: every value is finite
        raise BadInput(entry.path, f"spectrogram is not finite (peak sample {float(np.abs(audio).max()):.3g}: far "
                                   "too loud for float32 power; is it a float file of unscaled samples?)")
    key = sample_key(item.number, entry.path)
    info = {
        "path": entry.path,
        "frames": frames,
        "samples": len(audio),
        "sample_rate": features.sample_rate,
        "orig_sample_rate": orig_rate,
        "orig_length": orig_length,
        "intervals": rescale_intervals(entry.intervals, orig_rate, features.sample_rate),
        "metadata": entry.metadata,
        "params": features.fingerprint(),
        "audio": with_audio,
    }
    members = [tar_member(f"{key}.{SPEC}", npy_header(spectrogram), memoryview(spectrogram).cast("B")),
               tar_member(f"{key}.{INFO}", pack(info))]
    if with_audio:
        members.append(tar_member(f"{key}.{AUDIO}", encode_flac(audio, features.sample_rate, exact_16bit)))
    index_row = {"key": key, "path": entry.path, "frames": frames, "samples": len(audio),
                 "intervals": info["intervals"], "metadata": entry.metadata}
    return {"members": members, "index": index_row, "seconds": orig_length / orig_rate, "sum": total,
            "sumsq": total_sq}


def _process_task(item: _Planned, features: FeatureConfig, with_audio: bool) -> Union[Dict[str, Any], BadInput]:
    try:
        return process_file(item, features, with_audio)
    except BadInput as bad:
        return bad
    except Exception as exc:  # an unexpected failure on one file must not lose the others
        return BadInput(item.entry.path, f"failed: {type(exc).__name__}: {exc}")


def _process_group(items: List[_Planned], features: FeatureConfig,
                   with_audio: bool) -> List[Union[Dict[str, Any], BadInput]]:
    return [_process_task(item, features, with_audio) for item in items]


def _task_groups(work: List[_Planned], seconds: float = 60.0) -> List[List[_Planned]]:
    """Consecutive files, about `seconds` of audio per task: one task per short file cost the main
    process a pool round trip per file (tools/bench.py, write side)."""
    groups: List[List[_Planned]] = []
    total = seconds
    for item in work:
        if total >= seconds:
            groups.append([])
            total = 0.0
        groups[-1].append(item)
        total += item.seconds
    return groups


def _process_all(work: List[_Planned], features: FeatureConfig, with_audio: bool,
                 workers: int) -> Iterator[Union[Dict[str, Any], BadInput]]:
    """Results in plan order, with at most a few tasks (about a minute of audio each) in flight per
    worker (bounded memory).

    Forked processes where the platform has fork, as torch's DataLoader does (a spawned worker spends
    seconds importing torch; each worker sets one torch thread before any work); an executor rather than
    a Pool, because a Pool waits forever for the task of a worker that died, where an executor raises.
    """
    if workers == 1 or len(work) <= 1:
        threads = torch.get_num_threads()
        _init_worker()
        try:
            for item in work:
                yield _process_task(item, features, with_audio)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_pool_worker,
                             initargs=(os.getpid(),)) as pool:
        in_flight: Deque[Future] = deque()
        todo = iter(_task_groups(work))
        for group in itertools.islice(todo, 4 * workers):
            in_flight.append(pool.submit(_process_group, group, features, with_audio))
        while in_flight:
            future = in_flight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                raise SpgError("a worker process died (out of memory or killed?); finished shards are kept, "
                               "rerun the same command to resume") from None
            for group in itertools.islice(todo, 1):
                in_flight.append(pool.submit(_process_group, group, features, with_audio))
            yield from results


# ---------------------------------------------------------------- writing


class _LocalOutput:
    """OUTPUT_DIR on a local file system. Every write goes to a temporary name in the same folder and is
    renamed when complete, so a name is either absent or whole (the S3 twin is s3.S3Output)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def prepare(self, clean_temporaries: bool) -> None:
        state_dir = os.path.join(self.root, STATE_DIR)
        os.makedirs(state_dir, exist_ok=True)
        for folder in (self.root, state_dir) if clean_temporaries else ():
            for name in os.listdir(folder):
                if name.startswith(".") and ".tmp" in name:  # left by a killed run; other parts may be writing theirs
                    os.remove(os.path.join(folder, name))

    def read(self, name: str) -> Optional[bytes]:
        try:
            with open(os.path.join(self.root, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, *parts: Any, sha256: Optional[str] = None) -> None:
        write_bytes_atomic(os.path.join(self.root, name), *parts)

    def matches(self, name: str, size: int, sha256: str) -> bool:
        path = os.path.join(self.root, name)
        return os.path.exists(path) and os.path.getsize(path) == size and _sha256_file(path) == sha256

    def names(self, folder: str = "") -> List[str]:
        return os.listdir(os.path.join(self.root, folder))

    def remove(self, name: str) -> None:
        os.remove(os.path.join(self.root, name))


def _output(output_dir: str) -> Union[_LocalOutput, S3Output]:
    return S3Output(output_dir) if is_s3_url(output_dir) else _LocalOutput(output_dir)


def _state_path(k: int) -> str:
    """The state record of shard k, relative to OUTPUT_DIR."""
    return f"{STATE_DIR}/{shard_name(k)}.msgpack"


def _shard_done(output_dir: str, k: int) -> bool:
    """A shard is done when its record exists and its tar (if any) is there with the recorded size and
    sha256 (local: hashed again; S3: the object's size and the sha256 stored with it at upload)."""
    out = _output(output_dir)
    data = out.read(_state_path(k))
    if data is None:
        return False
    record = unpack(data)
    if record["files"] == 0:
        return True
    return out.matches(record["name"], record["bytes"], record["sha256"])


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_bytes(obj: Any) -> bytes:
    """Strict JSON (no NaN or Infinity, which other languages' parsers refuse)."""
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()


class _ShardWriter:
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

    def submit(self, k: int, records: List[Union[Dict[str, Any], BadInput]]) -> None:
        self._raise()
        self.waiting.put((k, records))

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
                _write_shard(self.output_dir, *item)
            except BaseException as exc:  # handed to the caller's thread
                self.error = exc


def _write_shard(output_dir: str, k: int, records: List[Union[Dict[str, Any], BadInput]]) -> None:
    good = [r for r in records if not isinstance(r, BadInput)]
    record: Dict[str, Any] = {
        "name": shard_name(k), "files": len(good), "frames": sum(r["index"]["frames"] for r in good),
        "seconds": sum(r["seconds"] for r in good), "bytes": 0, "sha256": None,
        "sum": [float(v) for v in np.sum([r["sum"] for r in good], axis=0)] if good else None,
        "sumsq": [float(v) for v in np.sum([r["sumsq"] for r in good], axis=0)] if good else None,
        "index": [dict(r["index"], shard=shard_name(k)) for r in good],
        "report": [_report_row(r) for r in records if isinstance(r, BadInput)],
    }
    out = _output(output_dir)
    if good:
        parts = [m for r in good for m in r["members"]]
        size = sum(len(m) for m in parts)
        parts.append(tar_end(size))
        digest = hashlib.sha256()
        for part in parts:  # hashed and written piece by piece: the shard is never joined in memory
            digest.update(part)
        record["bytes"], record["sha256"] = size + len(parts[-1]), digest.hexdigest()
        out.write(shard_name(k), *parts, sha256=record["sha256"])
    out.write(_state_path(k), pack(record))


def _finalize(output_dir: str, shard_count: int, features: FeatureConfig, with_audio: bool,
              rejected_early: List[Dict[str, str]]) -> Dict[str, Any]:
    """Index, then manifest last: a reader never sees a manifest naming a shard that is not there."""
    out = _output(output_dir)
    records = []
    for k in range(shard_count):
        data = out.read(_state_path(k))
        if data is None:
            raise SpgError(f"{output_dir}: state record {_state_path(k)} disappeared; rerun to rewrite that shard")
        records.append(unpack(data))
    report = sorted(rejected_early + [row for r in records for row in r["report"]], key=lambda row: row["path"])
    good = [r for r in records if r["files"]]
    if not good:
        raise SpgError(_nothing_usable(len(report), report, "every file was rejected"))
    index = [row for r in good for row in r["index"]]
    index_bytes = pack(index)
    frames = sum(r["frames"] for r in good)
    total = np.sum([r["sum"] for r in good], axis=0)
    total_sq = np.sum([r["sumsq"] for r in good], axis=0)
    mean = total / frames
    std = np.sqrt(np.maximum(total_sq / frames - mean**2, 0.0))
    seconds = sum(r["seconds"] for r in good)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_by": f"spgdataset {__version__}",
        "features": features.to_dict(),
        "params": features.fingerprint(),
        "with_audio": with_audio,
        "shards": [{k: r[k] for k in ("name", "files", "frames", "seconds", "bytes", "sha256")} for r in good],
        "totals": {"files": len(index), "frames": frames, "seconds": seconds, "hours": seconds / 3600,
                   "bytes": sum(r["bytes"] for r in good), "shards": len(good)},
        "labels": {key: [to_json(v) for v in vocab] for key, vocab in
                   vocabularies(row["metadata"] for row in index).items()},
        "stats": {"frames": frames, "mean": mean.tolist(), "std": std.tolist()},
        "index": INDEX_NAME,
        "index_sha256": hashlib.sha256(index_bytes).hexdigest(),
        "index_bytes": len(index_bytes),
        "report": {"counts": _count_kinds(report), "files": report},
    }
    out.write(INDEX_NAME, index_bytes)
    out.write(MANIFEST_NAME, _json_bytes(manifest))
    return manifest


def _report_row(bad: BadInput) -> Dict[str, str]:
    return {"path": bad.path, "problem": bad.problem, "kind": bad.kind}


def _count_kinds(report: List[Dict[str, str]]) -> Dict[str, int]:
    counts = {"bad": 0, "filtered": 0}
    for row in report:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return counts


def _describe(bad: BadInput) -> str:
    """One line per problem (control characters in names escaped)."""
    what = {"filtered": "skipped", "duplicate": "duplicate", "warning": "warning"}.get(bad.kind, "bad input")
    return f"{what}: {bad}"


def _nothing_usable(count: int, rejected: Sequence[Any], what: str) -> str:
    first = [(r.path, r.problem) if isinstance(r, BadInput) else (r["path"], r["problem"]) for r in rejected[:3]]
    detail = "; ".join(f"{p}: {why}" for p, why in first)
    return f"nothing usable: {what} ({count} rejected{': ' + detail if detail else ''})"
