"""Planning a run from the audio headers alone, before any audio is decoded.

The plan fixes which file goes into which shard, so the output is the same whatever the worker count, a
killed run knows which shards are finished, and `--part i/N` jobs agree without talking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple, Union

from ..errors import BadInput
from ..format.features import FeatureConfig
from ..format.names import FORMAT_VERSION
from ..rules.frames import num_frames, resampled_length
from .audio import probe
from .inputs import FileEntry


@dataclasses.dataclass
class PlannedFile:
    number: int  # position in the sorted input list; fixes the sample key
    entry: FileEntry
    frames: int  # expected, from the header
    seconds: float


def probe_one(entry: FileEntry, features: FeatureConfig) -> Tuple[int, float]:
    """Expected frames and seconds of one file from its header; checks the metadata length."""
    length, rate = probe(entry.abspath, entry.path)
    if length == 0:
        raise BadInput(entry.path, "audio is empty (0 samples)")
    if entry.length is not None and entry.length != length:
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {length} samples")
    samples = resampled_length(length, rate, features.sample_rate)
    return num_frames(samples, features.hop_length), length / rate


def _probe_run(entries: List[FileEntry], features: FeatureConfig) -> List[Union[Tuple[int, float], BadInput]]:
    outcomes: List[Union[Tuple[int, float], BadInput]] = []
    for entry in entries:
        try:
            outcomes.append(probe_one(entry, features))
        except BadInput as bad:
            outcomes.append(bad)
    return outcomes


def probe_all(entries: List[FileEntry], features: FeatureConfig,
              workers: int) -> Tuple[List[PlannedFile], List[BadInput]]:
    """The files whose headers read, numbered in input order, and the ones that did not.

    Header reads add up over a million files. Cached local headers take ~0.1 ms each and threads only
    fight over the GIL (2-3x slower here); headers that wait on storage (over 1 ms each in the first run
    of 64) are read by a thread pool.
    """
    runs = [entries[i : i + 64] for i in range(0, len(entries), 64)]
    started = time.perf_counter()
    probed = _probe_run(runs[0], features)
    if time.perf_counter() - started > 1e-3 * len(runs[0]):
        with ThreadPoolExecutor(max_workers=min(8, 2 * workers)) as pool:
            outcomes = pool.map(_probe_run, runs[1:], itertools.repeat(features))
            probed += [outcome for run in outcomes for outcome in run]
    else:
        probed += [outcome for run in runs[1:] for outcome in _probe_run(run, features)]
    planned, rejected = [], []
    for number, (entry, outcome) in enumerate(zip(entries, probed)):
        if isinstance(outcome, BadInput):
            rejected.append(outcome)
        else:
            planned.append(PlannedFile(number, entry, *outcome))
    return planned, rejected


def estimated_bytes(item: PlannedFile, features: FeatureConfig, with_audio: bool) -> int:
    itemsize = 2 if features.storage_dtype == "float16" else 4
    size = 3 * 512 + 256 + 128 + features.n_mels * item.frames * itemsize + 64 * sum(
        len(v) for v in item.entry.intervals.values()) + 64 * len(item.entry.metadata)
    if with_audio:
        size += item.frames * features.hop_length  # FLAC of speech: about one byte per sample
    return size


def plan_shards(planned: List[PlannedFile], features: FeatureConfig, with_audio: bool,
                max_bytes: Optional[int], max_files: Optional[int]) -> List[List[PlannedFile]]:
    """Greedy packing in path order; a file larger than the limit gets a shard of its own."""
    plan: List[List[PlannedFile]] = [[]]
    size = 0
    for item in planned:
        estimate = estimated_bytes(item, features, with_audio)
        full = (max_files is not None and len(plan[-1]) >= max_files) or (
            max_bytes is not None and size + estimate > max_bytes)
        if plan[-1] and full:
            plan.append([])
            size = 0
        plan[-1].append(item)
        size += estimate
    return plan


def run_fingerprint(plan: List[List[PlannedFile]], features: FeatureConfig, with_audio: bool) -> str:
    """Identifies the inputs and arguments, so a rerun into the same folder can tell it is the same job."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, features.to_dict(), with_audio]).encode())
    for k, shard in enumerate(plan):
        for item in shard:
            e = item.entry
            digest.update(json.dumps([k, item.number, e.path, item.frames, e.intervals, e.metadata],
                                     sort_keys=True, default=str).encode())
    return digest.hexdigest()
