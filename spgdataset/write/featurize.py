"""One audio file (or a segment of one) in, its shard members and its share of the statistics out.

Every item takes one path, _featurized(): frames [first, last) of a source (blocks.py: a short file decoded whole,
a long one read by ranges and never decoded whole), a block of frames at a time, each block checked finite, its
values and audio gathered in memory (a short file, a segment) or in temporary files (a whole long file); then
one tail, _result(), builds the info record, the index row, the members and the statistics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
import tempfile
import threading
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch

from ..errors import BadInput
from ..format.codec import npy_header, npy_header_for, pack
from ..format.features import FeatureConfig
from ..format.names import AUDIO, INFO, SPEC, sample_key
from ..format.tar import tar_header, tar_member, tar_padding
from ..rules.frames import rescale_intervals
from .audio import check_audio_file, read_audio
from .bandpass import FilteredSource
from .blocks import BlockSource, DecodedSource, Source
from .linear import LinearSpectrogram
from .logmel import LogMel
from .plan import PlannedFile


@dataclasses.dataclass
class FileResult:
    """A featurised file: its tar members (bytes), its index row, and what the manifest sums up."""

    members: Iterable[Any]  # bytes-like pieces, written one after the other (consumed once)
    index: Dict[str, Any]  # key, path, frames, samples, intervals (samples at the feature rate), metadata
    seconds: float  # of the original audio
    sum: np.ndarray  # (n_mels,) float64: sum over the file's frames of each mel bin
    sumsq: np.ndarray  # (n_mels,) float64: sum of squares
    stat_frames: Optional[int] = None  # frames the sums cover (a segment: the ones it owns); None: all


_PER_THREAD = threading.local()


def _spectrogram(features: FeatureConfig) -> Union[LogMel, LinearSpectrogram]:
    """One spectrogram maker per thread (its window and filters are worth keeping across files; a Dask
    worker may run several tasks at once in threads)."""
    maker = getattr(_PER_THREAD, "spectrogram", None)
    if maker is None or maker.config != features:
        maker = _PER_THREAD.spectrogram = (LogMel if features.kind == "logmel" else LinearSpectrogram)(features)
    return maker


def _not_finite(features: FeatureConfig, audio: np.ndarray) -> str:
    if features.kind == "linear" and features.transform_type in ("log_spect", "log"):
        return (f"spectrogram is not finite: transform_type={features.transform_type!r} takes the log of silent "
                "(zero-power) bins; set thresh to floor them")
    return (f"spectrogram is not finite (peak sample {float(np.abs(audio).max()):.3g}: far too loud for float32 "
            "power; is it a float file of unscaled samples?)")


def _check_lengths(item: PlannedFile, orig_length: int, samples: int, features: FeatureConfig) -> None:
    """The decoded lengths against metadata.json, the intervals and the STFT."""
    entry = item.entry
    if entry.length is not None and entry.length != orig_length:
        raise BadInput(entry.path,
                       f"length {entry.length} in metadata disagrees with the audio's {orig_length} samples")
    for name, spans in entry.intervals.items():
        for start, stop in spans:
            if stop > orig_length:
                raise BadInput(entry.path,
                               f"intervals[{name!r}] [{start}, {stop}] ends after the audio's {orig_length} samples")
    if samples < features.min_samples:
        raise BadInput(entry.path, f"audio too short: {samples} samples at {features.sample_rate} Hz, "
                                   f"a centred STFT with n_fft={features.n_fft} needs {features.min_samples}")


def featurize(item: PlannedFile, features: FeatureConfig, with_audio: bool) -> FileResult:
    """A file short enough to decode whole (BadInput when it cannot be used): its frames in one block."""
    entry = item.entry
    audio, orig_rate, orig_length, exact_16bit = read_audio(entry.abspath, features.sample_rate, entry.path)
    _check_lengths(item, orig_length, len(audio), features)
    source = DecodedSource(audio, orig_rate, orig_length, exact_16bit, entry.path)
    return _featurized(item, features, with_audio, source)


LONG_FILE_SECONDS = 600.0  # files longer than this are featurised in blocks (featurize_long)
LONG_FILE_SAMPLES = int(LONG_FILE_SECONDS * 48000)  # and files with more samples (14 s at 2 MHz): memory follows
# the samples decoded, not the seconds
BLOCK_VALUES = 1 << 26  # decoded values (samples x channels) a block may read: 256 MB as float32
BLOCK_FRAMES = 1 << 15  # frames per block: 5.5 minutes at hop 160, about 200 MB of working memory
COPY_BYTES = 8 << 20


def featurize_long(item: PlannedFile, features: FeatureConfig, with_audio: bool,
                   block_frames: Optional[int] = None) -> FileResult:
    """A long recording, or a segment of one (plan.py's Segment), in bounded memory: read, resampled and
    transformed `block_frames` at a time (blocks.py), never decoded whole. Every check runs before the shard
    sees a byte, so a bad long file is reported like any other."""
    with _block_source(item, features) as source:
        return _featurized(item, features, with_audio, source, block_frames or _block_frames(source, features))


def _featurized(item: PlannedFile, features: FeatureConfig, with_audio: bool, source: Source,
                block_frames: Optional[int] = None) -> FileResult:
    """The one path: frames [first, last) of `source` (the item's segment, else the file), `block_frames` at a
    time (None: one block), each block checked finite and handed with its audio to where the members gather;
    "log_spect" divides by the file's peak power, so its blocks first go once through the transform to find it."""
    first, last, end = span = _span(item, source, features)
    hop, size, dtype = features.hop_length, block_frames or last - first, str(features.storage_dtype)
    blocks = [(a, min(a + size, last)) for a in range(first, last, size)]
    maker = _spectrogram(features)
    # one block: the transform finds the file's peak itself (and plan.py never cuts such a file in segments)
    peaked = maker if isinstance(maker, LinearSpectrogram) and features.needs_file_peak and len(blocks) > 1 else None
    spectral = source if not features.bandpass else FilteredSource(source, features.f_min, features.band_top,
                                                                  features.sample_rate)
    peak = None if peaked is None else max(
        peaked.power_of_padded(spectral.frames_padded(a, b, features.n_fft, hop))[1] for a, b in blocks)
    # a whole file read by ranges may be a day: its members gather on disk; a short file or a segment in memory
    on_disk = item.segment is None and block_frames is not None
    gathered = _OnDisk(features, last - first, with_audio) if on_disk else _InMemory(with_audio)
    try:
        with _flac_writer(gathered.audio, features.sample_rate, source) as flac:
            for a, b in blocks:
                padded = spectral.frames_padded(a, b, features.n_fft, hop)
                block = maker.of_padded(padded, dtype) if peaked is None else peaked.of_padded(padded, dtype, peak)
                sums = _stats(block)  # finite sums: every value is finite (float32 squares cannot overflow float64)
                if not (np.isfinite(sums[0]).all() and np.isfinite(sums[1]).all()):
                    raise BadInput(source.name, _not_finite(features, padded))
                gathered.add(a - first, block, sums)
                if flac is not None:
                    flac.write(np.clip(source.samples(a * hop, min(b * hop, end)), -1.0, 1.0 - 2.0**-23))
    except BaseException:
        gathered.close()
        raise
    return _result(item, features, with_audio, source, gathered, span)


def _span(item: PlannedFile, source: Source, features: FeatureConfig) -> Tuple[int, int, int]:
    """(first, last, end): frames [first, last) of the item's segment, checked against the file's, else all the
    file's; their audio ends at sample `end` (frames = 1 + samples // hop_length)."""
    hop, n, segment = features.hop_length, source.samples_count, item.segment
    if segment is None:
        return 0, 1 + n // hop, n
    if 1 + n // hop != segment.file_frames:
        raise BadInput(item.entry.path, f"audio has {1 + n // hop} frames, its header said {segment.file_frames}")
    last = segment.offset + item.frames
    return segment.offset, last, min(last * hop - 1, n)


def _result(item: PlannedFile, features: FeatureConfig, with_audio: bool, source: Source,
            gathered: Union["_InMemory", "_OnDisk"], span: Tuple[int, int, int]) -> FileResult:
    """The one tail: info record, index row and members of frames [first, last) and samples [first * hop, end);
    a segment's intervals moved to its first frame, its statistics over the frames it owns (the overlap counts
    once)."""
    (first, last, end), segment = span, item.segment
    shift = first * features.hop_length
    if with_audio and end == shift:  # a FLAC of no samples is no file at all
        assert segment is not None  # a whole file has at least features.min_samples
        raise BadInput(item.entry.path, f"segment {segment.number} holds no samples (its one frame is centred past "
                                        "the file's last sample): there is no audio to store")
    intervals = rescale_intervals(item.entry.intervals, source.orig_rate, features.sample_rate)
    if segment is not None:
        intervals = _moved(intervals, shift, end - shift)
    info, row = _described(item, features, with_audio, last - first, end - shift, source.orig_rate, source.length,
                           intervals)
    owned = last - first if segment is None else segment.owned
    members, total, total_sq = gathered.members(row["key"], tar_member(f"{row['key']}.{INFO}", pack(info)), owned)
    if segment is None:
        return FileResult(members, row, source.length / source.orig_rate, total, total_sq)
    return FileResult(members, row, item.seconds, total, total_sq, segment.owned)


def _stats(spectrogram: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row sum and sum of squares (float64) of the stored values."""
    stored = torch.from_numpy(spectrogram)
    wide = stored.float() if stored.dtype == torch.float16 else stored.double()  # float16 squares are exact in float32
    return wide.sum(1, dtype=torch.float64).numpy(), wide.square().sum(1, dtype=torch.float64).numpy()


def _described(item: PlannedFile, features: FeatureConfig, with_audio: bool, frames: int, samples: int, orig_rate: int,
               orig_length: int, intervals: Dict[str, List[List[int]]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The info record and the index row of a featurised file (a segment's: with where it stands in its file)."""
    entry = item.entry
    info = {"path": entry.path, "frames": frames, "samples": samples, "sample_rate": features.sample_rate,
            "orig_sample_rate": orig_rate, "orig_length": orig_length, "intervals": intervals,
            "metadata": entry.metadata, "params": features.fingerprint(), "audio": with_audio}
    index_row = {"key": _key(item), "path": entry.path, "frames": frames, "samples": samples, "intervals": intervals,
                 "metadata": entry.metadata}
    if item.segment is not None:
        place = {"offset": item.segment.offset, "owned": item.segment.owned}
        info["segment"] = dict(place, number=item.segment.number, file_frames=item.segment.file_frames)
        index_row.update(place)
    return info, index_row


def _key(item: PlannedFile) -> str:
    """The sample key: a segment's ends in _sNNNNN."""
    key = sample_key(item.number, item.entry.path)
    return key if item.segment is None else f"{key}_s{item.segment.number:05d}"


@contextlib.contextmanager
def _block_source(item: PlannedFile, features: FeatureConfig) -> Iterator[BlockSource]:
    """The file of `item` open for reading by ranges, its lengths checked (a long file is never decoded whole)."""
    entry = item.entry
    check_audio_file(entry.abspath, entry.path)
    try:
        sound = sf.SoundFile(entry.abspath)
    except Exception as exc:
        raise BadInput(entry.path, f"corrupt or unreadable audio: {exc}") from None
    with sound:
        source = BlockSource(sound, features.sample_rate, entry.path)
        _check_lengths(item, source.length, source.samples_count, features)
        yield source


def _moved(intervals: Dict[str, List[List[int]]], shift: int, samples: int) -> Dict[str, List[List[int]]]:
    """Intervals (samples) as seen from sample `shift`, cut to [0, samples): each frame keeps its masks. Every
    name stays, empty or not: the file is annotated in each of its segments."""
    return {name: [[max(a - shift, 0), min(b - shift, samples)] for a, b in spans if b > shift and a < shift + samples]
            for name, spans in intervals.items()}


def _block_frames(source: BlockSource, features: FeatureConfig) -> int:
    """Frames per block: BLOCK_FRAMES, fewer when that many would decode more than BLOCK_VALUES (a high rate, many
    channels), so that a block's memory follows its values and not the file's rate."""
    per_frame = features.hop_length * max(source.orig_rate / features.sample_rate, 1.0) * source.channels
    return max(1, min(BLOCK_FRAMES, int(BLOCK_VALUES // per_frame)))


@contextlib.contextmanager
def _flac_writer(target: Optional[IO[bytes]], sample_rate: int, source: Source) -> Iterator[Optional[sf.SoundFile]]:
    """The audio member's FLAC, written block by block: 16-bit when the source is 16-bit at this rate and mono
    (its samples then stored exactly), else 24-bit."""
    if target is None:
        yield None
        return
    with sf.SoundFile(target, "w", sample_rate, 1, "PCM_16" if source.exact_16bit else "PCM_24", format="FLAC") as flac:
        yield flac


def _streamed(name: str, data: IO[bytes], after: List[List[Any]]) -> Iterator[Any]:
    """A tar member whose bytes are in the temporary file `data` (closed at the end), then the `after` members."""
    try:
        size = data.seek(0, os.SEEK_END)
        data.seek(0)
        yield tar_header(name, size)
        while chunk := data.read(COPY_BYTES):
            yield chunk
        yield tar_padding(size)
    finally:
        data.close()
    for member in after:
        yield from member


class _InMemory:
    """Where the blocks of a short file or a segment gather: in memory (a segment holds SEGMENT_SECONDS and its
    overlap, a short file at most LONG_FILE_SAMPLES). Its statistics are summed once over the frames it owns,
    as one array, so that they are the same bits whatever the blocks."""

    def __init__(self, with_audio: bool) -> None:
        self.blocks: List[np.ndarray] = []
        self.sums: List[Tuple[np.ndarray, np.ndarray]] = []  # each block's: the file's when one block holds it all
        self.audio: Optional[io.BytesIO] = io.BytesIO() if with_audio else None

    def add(self, offset: int, block: np.ndarray, sums: Tuple[np.ndarray, np.ndarray]) -> None:
        self.blocks.append(block)
        self.sums.append(sums)

    def members(self, key: str, info: List[Any], owned: int) -> Tuple[List[Any], np.ndarray, np.ndarray]:
        """(tar members: spectrogram, `info`, audio; sum; sum of squares over the first `owned` frames)."""
        spec = self.blocks[0] if len(self.blocks) == 1 else np.concatenate(self.blocks, axis=1)
        total, total_sq = self.sums[0] if len(self.blocks) == 1 and owned == spec.shape[1] else _stats(spec[:, :owned])
        members = tar_member(f"{key}.{SPEC}", npy_header(spec), spec.data.cast("B")) + info
        if self.audio is not None:
            members += tar_member(f"{key}.{AUDIO}", self.audio.getvalue())
        return members, total, total_sq

    def close(self) -> None:
        """Nothing held outside memory."""


class _OnDisk:
    """Where the blocks of a whole long file gather: the npy (each row's piece written where it goes) and the
    FLAC in temporary files, streamed into the shard; the statistics summed block by block."""

    def __init__(self, features: FeatureConfig, frames: int, with_audio: bool) -> None:
        self.frames, self.dtype = frames, np.dtype(features.storage_dtype)
        self.header = npy_header_for(self.dtype, (features.n_mels, frames))
        self.spec: IO[bytes] = tempfile.TemporaryFile()
        self.audio: Optional[IO[bytes]] = tempfile.TemporaryFile() if with_audio else None
        self.spec.write(self.header)
        self.total: Optional[np.ndarray] = None
        self.total_sq: Optional[np.ndarray] = None

    def add(self, offset: int, block: np.ndarray, sums: Tuple[np.ndarray, np.ndarray]) -> None:
        for row in range(block.shape[0]):
            where = len(self.header) + (row * self.frames + offset) * self.dtype.itemsize
            os.pwrite(self.spec.fileno(), block[row].tobytes(), where)
        self.total = sums[0] if self.total is None else self.total + sums[0]
        self.total_sq = sums[1] if self.total_sq is None else self.total_sq + sums[1]

    def members(self, key: str, info: List[Any], owned: int) -> Tuple[Iterator[Any], np.ndarray, np.ndarray]:
        """As _InMemory.members(); a whole file owns all its frames, whose sums are already there."""
        assert self.total is not None and self.total_sq is not None and owned == self.frames
        members = _streamed(f"{key}.{SPEC}", self.spec, [info])
        if self.audio is not None:
            members = itertools.chain(members, _streamed(f"{key}.{AUDIO}", self.audio, []))
        return members, self.total, self.total_sq

    def close(self) -> None:
        self.spec.close()
        if self.audio is not None:
            self.audio.close()


def featurize_or_report(item: PlannedFile, features: FeatureConfig,
                        with_audio: bool) -> Union[FileResult, BadInput]:
    """featurize() or featurize_long(), with any failure of this one file turned into its report row: it must not
    lose the others."""
    try:
        if item.segment is not None or item.seconds > LONG_FILE_SECONDS or item.original_samples > LONG_FILE_SAMPLES:
            return featurize_long(item, features, with_audio)
        return featurize(item, features, with_audio)
    except BadInput as bad:
        return bad
    except Exception as exc:
        return BadInput(item.entry.path, f"failed: {type(exc).__name__}: {exc}")
