"""Planning a run from the audio headers alone, before any audio is decoded.

The plan fixes which file goes into which shard, so the output is the same whatever the worker count, a
killed run knows which shards are finished, and `--part i/N` jobs agree without talking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import List, Optional, Tuple, Union

from ..errors import BadInput, shown
from ..format.features import FeatureConfig, is_plain_finite
from ..format.names import FORMAT_VERSION
from ..rules.frames import num_frames, resampled_length
from .annotated import with_annotation_intervals
from .inputs import FileEntry

# (samples per channel, sample rate): audio.probe()'s AudioHeader, which may carry the samples its header declared
# beyond those the file holds; or what is wrong with the file
Header = Union[Tuple[int, int], str]


SEGMENT_SECONDS = 300.0  # a long file is stored in segments owning this much each (the last: what is left)
SEGMENT_OVERLAP_SECONDS = 30.0  # and holding this much more, so a window of up to this length never crosses


@dataclasses.dataclass(frozen=True)
class Segment:
    """Part of a long file stored as its own sample: frames [offset, offset + frames) of the file, owning the
    windows that start in [offset, offset + owned). Windows stay the whole file's (rules/windows.py)."""

    number: int  # k-th segment of its file
    offset: int
    owned: int
    file_frames: int


@dataclasses.dataclass
class PlannedFile:
    number: int  # position in the sorted input list; fixes the sample key
    entry: FileEntry
    frames: int  # expected, from the header (a segment: the frames it holds)
    seconds: float  # of the original audio (a segment: the part it owns)
    segment: Optional[Segment] = None
    original_samples: int = 0  # per channel at the file's own rate (0: not known)


def segment_frames(features: FeatureConfig, seconds: float = SEGMENT_SECONDS,
                   overlap_seconds: float = SEGMENT_OVERLAP_SECONDS) -> Tuple[int, int]:
    """(frames a segment owns, frames it holds beyond them) at these feature parameters. Each is a finite number
    of seconds whose frames fit the index's int64 columns, so inf, nan and absurd lengths are refused here, with
    `segments` (write_shards' argument) named, instead of an OverflowError in the planner."""
    per_second = features.sample_rate / features.hop_length
    limit = 2**62  # frames; the index stores offsets and owned frames as int64
    rules = (("segment length", seconds, 1, f"owning at least one frame ({1 / per_second:g} s)"),
             ("overlap", overlap_seconds, 0, "with no negative overlap"))
    counts = []
    for what, value, least, rule in rules:
        scaled = value * per_second if is_plain_finite(value) else float("nan")
        frames = round(scaled) if abs(scaled) <= limit else None  # nan and inf: None
        if frames is None or frames < least:
            raise ValueError(f"segments: the {what} must be a finite number of seconds, {rule} and at most 2**62 "
                             f"frames ({limit / per_second:.3g} s), got {shown(value, 40)}")
        counts.append(frames)
    return counts[0], counts[1]


def segments_of(item: PlannedFile, features: FeatureConfig, segments: Tuple[int, int]) -> List[PlannedFile]:
    """A long file as its segments of `segments` = segment_frames(...), or [item] when it fits one (or when vak's
    log_spect needs its whole peak or the band-pass its state from the first sample: FeatureConfig.whole_file)."""
    owned, overlap = segments
    if item.frames <= owned + overlap or features.whole_file:
        return [item]
    total = item.frames
    offsets = list(range(0, total, owned))
    if total - offsets[-1] <= overlap:  # a tail within the overlap of the segment before: that one owns it too,
        offsets.pop()  # so no segment holds a frame or two (or, at hop-aligned ends, no sample at all)
    owns = [b - a for a, b in zip(offsets, offsets[1:] + [total])]
    return [PlannedFile(item.number, item.entry, min(owned + overlap, total - offset), item.seconds * own / total,
                        Segment(k, offset, own, total))
            for k, (offset, own) in enumerate(zip(offsets, owns))]


def planned_file(number: int, entry: FileEntry, header: Header, features: FeatureConfig) -> PlannedFile:
    """A file whose header read, with its expected frames; BadInput when the header says it cannot be used
    (unreadable, empty, or another length than metadata.json claims)."""
    if isinstance(header, str):
        raise BadInput(entry.path, header)
    length, rate = header
    if length == 0:
        raise BadInput(entry.path, "audio is empty (0 samples)")
    if entry.length is not None and entry.length != length:
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {length} samples")
    entry = with_annotation_intervals(entry, rate)
    samples = resampled_length(length, rate, features.sample_rate)
    return PlannedFile(number, entry, num_frames(samples, features.hop_length), length / rate, original_samples=length)


def plan_files(entries: List[FileEntry], headers: List[Header], features: FeatureConfig,
               segments: Optional[Tuple[int, int]] = None) -> Tuple[List[PlannedFile], List[BadInput]]:
    """The files whose headers read, numbered in input order (long files as segments: segment_frames), and
    the ones that did not."""
    segments = segments or segment_frames(features)
    planned, rejected = [], []
    for number, (entry, header) in enumerate(zip(entries, headers)):
        try:
            item = planned_file(number, entry, header, features)
        except BadInput as bad:
            rejected.append(bad)
            continue
        planned += segments_of(item, features, segments)
        rejected += [BadInput(entry.path, w, kind="warning") for w in item.entry.warnings[len(entry.warnings):]]
        rejected += [BadInput(entry.path, w, kind="warning") for w in [shortfall(header)] if w]
    return planned, rejected


def shortfall(header: Header) -> Optional[str]:
    """The warning for a file shorter than its header says (a copy or a recording cut short): it is stored as
    libsndfile reads it, the samples present, and the report says so."""
    declared = getattr(header, "declared", None)
    if declared is None or isinstance(header, str):
        return None
    held, rate = header
    return (f"header says {declared} samples ({declared / rate:.2f} s), the file holds {held} ({held / rate:.2f} s); "
            "stored as read")


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
            row = [k, item.number, e.path, item.frames, e.intervals, e.metadata]
            row += [dataclasses.astuple(item.segment)] if item.segment else []  # whole files: as before segments
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()
