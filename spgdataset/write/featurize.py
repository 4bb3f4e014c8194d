"""One audio file in, its shard members and its share of the statistics out."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import tempfile
import threading
from typing import IO, Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch

from ..errors import BadInput
from ..format.codec import encode_flac, npy_header, npy_header_for, pack
from ..format.features import FeatureConfig
from ..format.names import AUDIO, INFO, SPEC, sample_key
from ..format.tar import tar_header, tar_member, tar_padding
from ..rules.frames import rescale_intervals
from .audio import check_audio_file, read_audio
from .blocks import BlockSource
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
    """One spectrogram maker per thread (its window, filters and buffer are worth keeping across files; a Dask
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
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {orig_length} samples")
    for name, spans in entry.intervals.items():
        for start, stop in spans:
            if stop > orig_length:
                raise BadInput(entry.path, f"intervals[{name!r}] [{start}, {stop}] ends after the audio's {orig_length} samples")
    if samples < features.min_samples:
        raise BadInput(entry.path, f"audio too short: {samples} samples at {features.sample_rate} Hz, "
                                   f"a centred STFT with n_fft={features.n_fft} needs {features.min_samples}")


def featurize(item: PlannedFile, features: FeatureConfig, with_audio: bool) -> FileResult:
    """Decode, check and featurise one file (BadInput when it cannot be used)."""
    entry = item.entry
    audio, orig_rate, orig_length, exact_16bit = read_audio(entry.abspath, features.sample_rate, entry.path)
    _check_lengths(item, orig_length, len(audio), features)
    spectrogram = _spectrogram(features)(audio, features.storage_dtype)
    frames = spectrogram.shape[1]
    total, total_sq = _stats(spectrogram)
    if not (np.isfinite(total).all() and np.isfinite(total_sq).all()):  # finite sums: every value is finite
        raise BadInput(entry.path, _not_finite(features, audio))
    intervals = rescale_intervals(entry.intervals, orig_rate, features.sample_rate)
    info, index_row = _described(item, features, with_audio, frames, len(audio), orig_rate, orig_length, intervals)
    key = index_row["key"]
    members = tar_member(f"{key}.{SPEC}", npy_header(spectrogram), memoryview(spectrogram).cast("B"))
    members += tar_member(f"{key}.{INFO}", pack(info))
    if with_audio:
        members += tar_member(f"{key}.{AUDIO}", encode_flac(audio, features.sample_rate, exact_16bit))
    return FileResult(members, index_row, orig_length / orig_rate, total, total_sq)


def _stats(spectrogram: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row sum and sum of squares (float64) of the stored values."""
    stored = torch.from_numpy(spectrogram)
    wide = stored.float() if stored.dtype == torch.float16 else stored.double()  # float16 squares are exact in float32
    return wide.sum(1, dtype=torch.float64).numpy(), wide.square().sum(1, dtype=torch.float64).numpy()


def _described(item: PlannedFile, features: FeatureConfig, with_audio: bool, frames: int, samples: int,
               orig_rate: int, orig_length: int, intervals: Dict[str, List[List[int]]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
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


def featurize_segment(item: PlannedFile, features: FeatureConfig, with_audio: bool) -> FileResult:
    """One segment of a long file (plan.py's Segment) as its own sample: the frames it holds, computed from
    their samples alone (blocks.py); its audio; its intervals moved to its first frame and cut to it; the
    statistics of the frames it owns, so the overlap counts once."""
    entry, segment = item.entry, item.segment
    assert segment is not None
    with _block_source(item, features) as source:
        hop, n = features.hop_length, source.samples_count
        if 1 + n // hop != segment.file_frames:
            raise BadInput(entry.path, f"audio has {1 + n // hop} frames, its header said {segment.file_frames}")
        first, last = segment.offset, segment.offset + item.frames
        step = _block_frames(source, features)
        spectrogram = np.concatenate([_spectrogram(features).of_padded(
            source.frames_padded(a, min(a + step, last), features.n_fft, hop), features.storage_dtype)
            for a in range(first, last, step)], axis=1)
        samples = n - first * hop if last == segment.file_frames else item.frames * hop - 1  # frames = 1 + samples // hop
        audio = np.concatenate([source.samples(a, min(a + step * hop, first * hop + samples))
                                for a in range(first * hop, first * hop + samples, step * hop)]) if with_audio else None
    total, total_sq = _stats(spectrogram[:, : segment.owned])
    if not (np.isfinite(total).all() and np.isfinite(spectrogram).all()):
        raise BadInput(entry.path, _not_finite(features, source.samples(first * hop, first * hop + samples)))
    intervals = _moved(rescale_intervals(entry.intervals, source.orig_rate, features.sample_rate), first * hop, samples)
    info, row = _described(item, features, with_audio, item.frames, samples, source.orig_rate, source.length, intervals)
    key = row["key"]
    members = tar_member(f"{key}.{SPEC}", npy_header(spectrogram), memoryview(spectrogram).cast("B"))
    members += tar_member(f"{key}.{INFO}", pack(info))
    if audio is not None:
        members += tar_member(f"{key}.{AUDIO}", encode_flac(audio, features.sample_rate, source.exact_16bit))
    return FileResult(members, row, item.seconds, total, total_sq, segment.owned)


def _moved(intervals: Dict[str, List[List[int]]], shift: int, samples: int) -> Dict[str, List[List[int]]]:
    """Intervals (samples) as seen from sample `shift`, cut to [0, samples): each frame keeps its masks. Every
    name stays, empty or not: the file is annotated in each of its segments."""
    return {name: [[max(a - shift, 0), min(b - shift, samples)] for a, b in spans if b > shift and a < shift + samples]
            for name, spans in intervals.items()}


LONG_FILE_SECONDS = 600.0  # files longer than this are featurised in blocks (featurize_long)
LONG_FILE_SAMPLES = int(LONG_FILE_SECONDS * 48000)  # and files with more samples (14 s at 2 MHz): memory follows
# the samples decoded, not the seconds
BLOCK_VALUES = 1 << 26  # decoded values (samples x channels) a block may read: 256 MB as float32
BLOCK_FRAMES = 1 << 15  # frames per block: 5.5 minutes at hop 160, about 200 MB of working memory
COPY_BYTES = 8 << 20


def featurize_long(item: PlannedFile, features: FeatureConfig, with_audio: bool,
                   block_frames: Optional[int] = None) -> FileResult:
    """featurize() for a long recording, in bounded memory: decoded, resampled and transformed `block_frames`
    at a time (blocks.py), the spectrogram and audio gathered in temporary files and streamed into the shard.
    Every check runs before the shard sees a byte, so a bad long file is reported like any other."""
    with _block_source(item, features) as source:
        frames = 1 + source.samples_count // features.hop_length
        spec = tempfile.TemporaryFile()
        audio = tempfile.TemporaryFile() if with_audio else None
        try:
            total, total_sq = _long_spectrogram(source, features, frames, block_frames or _block_frames(source, features),
                                                spec, audio)
        except BaseException:
            spec.close()
            if audio is not None:
                audio.close()
            raise
    intervals = rescale_intervals(item.entry.intervals, source.orig_rate, features.sample_rate)
    info, index_row = _described(item, features, with_audio, frames, source.samples_count, source.orig_rate,
                                 source.length, intervals)
    key = index_row["key"]
    members = _streamed(f"{key}.{SPEC}", spec, [tar_member(f"{key}.{INFO}", pack(info))])
    if audio is not None:
        members = itertools.chain(members, _streamed(f"{key}.{AUDIO}", audio, []))
    return FileResult(members, index_row, source.length / source.orig_rate, total, total_sq)


def _block_frames(source: BlockSource, features: FeatureConfig) -> int:
    """Frames per block: BLOCK_FRAMES, fewer when that many would decode more than BLOCK_VALUES (a high rate, many
    channels), so that a block's memory follows its values and not the file's rate."""
    per_frame = features.hop_length * max(source.orig_rate / features.sample_rate, 1.0) * source.channels
    return max(1, min(BLOCK_FRAMES, int(BLOCK_VALUES // per_frame)))


def _long_spectrogram(source: BlockSource, features: FeatureConfig, frames: int, block_frames: int,
                      spec: IO[bytes], audio: Optional[IO[bytes]]) -> Tuple[np.ndarray, np.ndarray]:
    """The npy of the (rows, frames) spectrogram into `spec` block by block (each row's piece written where it
    goes), the resampled audio as FLAC into `audio`; the statistics. "log_spect" divides by the file's peak
    power: its blocks go twice through the transform, the first pass only to find the peak."""
    maker = _spectrogram(features)
    hop, n = features.hop_length, source.samples_count
    dtype = np.dtype(features.storage_dtype)
    header = npy_header_for(dtype, (features.n_mels, frames))
    spec.write(header)
    peak = None
    blocks = [(a, min(frames, a + block_frames)) for a in range(0, frames, block_frames)]
    if features.needs_file_peak:
        peak = max(float(maker.power_of_padded(source.frames_padded(a, b, features.n_fft, hop)).max())
                   for a, b in blocks)
    total = total_sq = None
    with _flac_writer(audio, features.sample_rate, source) as flac:
        for a, b in blocks:
            padded = source.frames_padded(a, b, features.n_fft, hop)
            block = (maker.of_padded(padded, features.storage_dtype) if peak is None
                     else maker.of_padded(padded, features.storage_dtype, peak))
            block_sum, block_sq = _stats(block)
            if not (np.isfinite(block_sum).all() and np.isfinite(block_sq).all()):
                raise BadInput(source.name, _not_finite(features, padded))
            total = block_sum if total is None else total + block_sum
            total_sq = block_sq if total_sq is None else total_sq + block_sq
            for row in range(block.shape[0]):
                os.pwrite(spec.fileno(), block[row].tobytes(), len(header) + (row * frames + a) * dtype.itemsize)
            if flac is not None:
                flac.write(np.clip(source.samples(a * hop, min(b * hop, n)), -1.0, 1.0 - 2.0**-23))
    return total, total_sq


@contextlib.contextmanager
def _flac_writer(target: Optional[IO[bytes]], sample_rate: int, source: BlockSource) -> Iterator[Optional[sf.SoundFile]]:
    """encode_flac()'s FLAC written block by block (16-bit when the source is 16-bit at this rate and mono)."""
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


def featurize_or_report(item: PlannedFile, features: FeatureConfig,
                        with_audio: bool) -> Union[FileResult, BadInput]:
    """featurize(), with any failure of this one file turned into its report row: it must not lose the others."""
    try:
        if item.segment is not None:
            return featurize_segment(item, features, with_audio)
        if item.seconds > LONG_FILE_SECONDS or item.original_samples > LONG_FILE_SAMPLES:
            return featurize_long(item, features, with_audio)
        return featurize(item, features, with_audio)
    except BadInput as bad:
        return bad
    except Exception as exc:
        return BadInput(item.entry.path, f"failed: {type(exc).__name__}: {exc}")
