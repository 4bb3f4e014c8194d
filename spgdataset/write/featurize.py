"""One audio file in, its shard members and its share of the statistics out."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Union

import numpy as np
import torch

from ..errors import BadInput
from ..format.codec import encode_flac, npy_header, pack
from ..format.features import FeatureConfig
from ..format.names import AUDIO, INFO, SPEC, sample_key
from ..format.tar import tar_member
from ..rules.frames import rescale_intervals
from .audio import read_audio
from .linear import LinearSpectrogram
from .logmel import LogMel
from .plan import PlannedFile


@dataclasses.dataclass
class FileResult:
    """A featurised file: its tar members (bytes), its index row, and what the manifest sums up."""

    members: List[Any]  # bytes-like pieces, written one after the other
    index: Dict[str, Any]  # key, path, frames, samples, intervals (samples at the feature rate), metadata
    seconds: float  # of the original audio
    sum: np.ndarray  # (n_mels,) float64: sum over the file's frames of each mel bin
    sumsq: np.ndarray  # (n_mels,) float64: sum of squares


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


def _check_audio(item: PlannedFile, audio: np.ndarray, orig_length: int, features: FeatureConfig) -> None:
    entry = item.entry
    if entry.length is not None and entry.length != orig_length:
        raise BadInput(entry.path, f"length {entry.length} in metadata disagrees with the audio's {orig_length} samples")
    for name, spans in entry.intervals.items():
        for start, stop in spans:
            if stop > orig_length:
                raise BadInput(entry.path, f"intervals[{name!r}] [{start}, {stop}] ends after the audio's {orig_length} samples")
    if len(audio) < features.min_samples:
        raise BadInput(entry.path, f"audio too short: {len(audio)} samples at {features.sample_rate} Hz, "
                                   f"a centred STFT with n_fft={features.n_fft} needs {features.min_samples}")


def featurize(item: PlannedFile, features: FeatureConfig, with_audio: bool) -> FileResult:
    """Decode, check and featurise one file (BadInput when it cannot be used)."""
    entry = item.entry
    audio, orig_rate, orig_length, exact_16bit = read_audio(entry.abspath, features.sample_rate, entry.path)
    _check_audio(item, audio, orig_length, features)
    spectrogram = _spectrogram(features)(audio, features.storage_dtype)
    frames = spectrogram.shape[1]
    stored = torch.from_numpy(spectrogram)
    wide = stored.float() if stored.dtype == torch.float16 else stored.double()  # float16 squares are exact in float32
    total, total_sq = wide.sum(1, dtype=torch.float64).numpy(), wide.square().sum(1, dtype=torch.float64).numpy()
    if not (np.isfinite(total).all() and np.isfinite(total_sq).all()):  # finite sums: every value is finite
        raise BadInput(entry.path, _not_finite(features, audio))
    key = sample_key(item.number, entry.path)
    intervals = rescale_intervals(entry.intervals, orig_rate, features.sample_rate)
    info = {"path": entry.path, "frames": frames, "samples": len(audio), "sample_rate": features.sample_rate,
            "orig_sample_rate": orig_rate, "orig_length": orig_length, "intervals": intervals,
            "metadata": entry.metadata, "params": features.fingerprint(), "audio": with_audio}
    members = tar_member(f"{key}.{SPEC}", npy_header(spectrogram), memoryview(spectrogram).cast("B"))
    members += tar_member(f"{key}.{INFO}", pack(info))
    if with_audio:
        members += tar_member(f"{key}.{AUDIO}", encode_flac(audio, features.sample_rate, exact_16bit))
    index_row = {"key": key, "path": entry.path, "frames": frames, "samples": len(audio), "intervals": intervals,
                 "metadata": entry.metadata}
    return FileResult(members, index_row, orig_length / orig_rate, total, total_sq)


def featurize_or_report(item: PlannedFile, features: FeatureConfig,
                        with_audio: bool) -> Union[FileResult, BadInput]:
    """featurize(), with any failure of this one file turned into its report row: it must not lose the others."""
    try:
        return featurize(item, features, with_audio)
    except BadInput as bad:
        return bad
    except Exception as exc:
        return BadInput(item.entry.path, f"failed: {type(exc).__name__}: {exc}")
