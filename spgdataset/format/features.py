"""Feature parameters: how audio becomes a spectrogram (the writer computes it: write/logmel.py, write/linear.py).

Two kinds: "logmel" (the default: log of mel-filtered STFT power) and "linear" (STFT power density of the bins
in [f_min, f_max), with vak's optional transform and threshold). Every kind has the same frames (centred,
1 + samples // hop_length), so masks, windows and splits do not depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np

STORAGE_DTYPES = ("float16", "float32")
KINDS = ("logmel", "linear")
TRANSFORM_TYPES = (None, "log_spect", "log_spect_plus_one", "log")  # vak's, for kind="linear"
LINEAR_ONLY = ("thresh", "transform_type")
MAX_FEATURE_RATE = 10_000_000  # Hz, as write/audio.py's MAX_SAMPLE_RATE for input audio
# Upper bounds of the integer parameters, far above any use, so that a manifest's number past them (10**30) is
# a one-line error here, never an OverflowError in numpy; n_mels: a linear spectrogram's bins at the largest n_fft.
MAXIMA = {"sample_rate": MAX_FEATURE_RATE, "n_fft": 2**20, "hop_length": 2**20, "n_mels": 2**19 + 1}
STD_FLOOR = 1e-5  # the reader normalises by max(std, STD_FLOOR), in float32 (read/dataset.py)
# The largest magnitude a stored value or a statistic may have: the storage type's range (float16), and for
# float32 small enough that (value - mean) / STD_FLOOR stays finite in float32, where the reader normalises
# (2 * 2**110 / 1e-5 = 2.6e38 < 3.4e38). A power of two, so the check of stored values is one over their bits.
VALUE_LIMIT = {"float16": 65504.0, "float32": 2.0**110}
CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # spgdataset/configs/*.json, package data


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes a spectrogram. Units: Hz and samples at `sample_rate`.

    n_mels is the spectrogram's height: mel bands for "logmel"; for "linear" it is set from the band (the STFT
    bins with f_min <= f < f_max; f_max None keeps every bin up to sample_rate / 2).
    """

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: Optional[float] = None
    log_eps: float = 1e-6
    storage_dtype: Optional[str] = None  # float16, or float32 for raw linear power (float16 would flush it)
    kind: str = "logmel"
    thresh: Optional[float] = None
    transform_type: Optional[str] = None
    bandpass: bool = False  # kind="linear": vak's Butterworth band-pass on [f_min, f_max] first (write/bandpass.py)

    def __post_init__(self) -> None:
        problems = []
        if self.storage_dtype is None:
            raw_power = self.kind == "linear" and self.transform_type is None
            object.__setattr__(self, "storage_dtype", "float32" if raw_power else "float16")  # frozen
        if self.kind not in KINDS:
            problems.append(f"kind must be one of {KINDS}, got {self.kind!r}")
        elif self.kind == "logmel":
            problems += [f"{name} applies to kind='linear' only" for name in LINEAR_ONLY
                         if getattr(self, name) is not None]
            if self.bandpass is not False:
                problems.append("bandpass applies to kind='linear' only")
        else:
            if self.transform_type not in TRANSFORM_TYPES:
                problems.append(f"transform_type must be one of {TRANSFORM_TYPES}, got {self.transform_type!r}")
            if self.thresh is not None and not is_plain_finite(self.thresh):
                problems.append(f"thresh must be a finite number or None, got {self.thresh!r}")
            if self.transform_type is None and self.storage_dtype == "float16":
                problems.append("a linear spectrogram without transform_type is raw power: store it as "
                                "storage_dtype='float32' (the default; float16 flushes values below 6e-8 to zero)")
        for name, most in MAXIMA.items():
            if type(getattr(self, name)) is not int or not 0 < getattr(self, name) <= most:
                problems.append(f"{name} must be a positive integer of at most {most}, got {getattr(self, name)!r}")
        for name in ("f_min", "f_max", "log_eps"):
            value = getattr(self, name)
            if not (value is None and name == "f_max") and not is_plain_finite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        if self.storage_dtype not in STORAGE_DTYPES:
            problems.append(f"storage_dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")
        if not problems:
            nyquist = self.sample_rate / 2
            f_max = nyquist if self.f_max is None else self.f_max
            if not 0 <= self.f_min < f_max <= nyquist:
                problems.append(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={f_max}")
            elif self.bandpass is not False and not (self.bandpass is True and 0 < self.f_min and f_max < nyquist):
                problems.append(f"bandpass (True or False) filters between f_min and f_max, which need "
                                f"0 < f_min < f_max < sample_rate/2 (a Butterworth band's edges), got {self.bandpass!r}, "
                                f"f_min={self.f_min}, f_max={f_max}")
            if self.log_eps <= 0:
                problems.append(f"log_eps must be positive, got {self.log_eps}")
        if not problems and self.kind == "linear":
            bins = len(self.linear_bins())
            if bins == 0:
                problems.append(f"no frequency bin of n_fft={self.n_fft} at {self.sample_rate} Hz lies in "
                                f"[{self.f_min}, {self.f_max}) Hz")
            elif self.n_mels not in (bins, FeatureConfig.n_mels):
                problems.append(f"n_mels is the number of bins in the band for kind='linear' ({bins}), "
                                f"got {self.n_mels}")
            object.__setattr__(self, "n_mels", bins)  # frozen: the height follows from the band
        if problems:
            raise ValueError("bad feature configuration: " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        """All parameters; a log-mel configuration leaves out the linear ones, so its fingerprint (and that of
        shards written before there were kinds) stays what it was."""
        values = dataclasses.asdict(self)
        if self.kind == "logmel":
            for name in ("kind", *LINEAR_ONLY):
                del values[name]
        if not self.bandpass:  # sets written before the option keep their fingerprint
            del values["bandpass"]
        return values

    @property
    def needs_file_peak(self) -> bool:
        """vak's "log_spect" divides by the whole file's peak power: no part of a file can be computed alone."""
        return self.kind == "linear" and self.transform_type == "log_spect"

    @property
    def whole_file(self) -> bool:
        """A file is one task, never cut in segments: its peak, or the band-pass's state from its first sample."""
        return self.needs_file_peak or self.bandpass

    @property
    def band_top(self) -> float:
        """f_max, or the Nyquist frequency when it is None."""
        return self.sample_rate / 2 if self.f_max is None else float(self.f_max)

    def linear_bins(self) -> np.ndarray:
        """Indices of the STFT bins a linear spectrogram keeps: f_min <= bin frequency < f_max."""
        freqs = np.arange(self.n_fft // 2 + 1) * (self.sample_rate / self.n_fft)
        keep = freqs >= self.f_min
        if self.f_max is not None:
            keep &= freqs < self.f_max
        return np.flatnonzero(keep)

    def freq_bins(self) -> np.ndarray:
        """Centre frequency (Hz) of each spectrogram row: the STFT bin's for "linear", the mel band's peak for
        "logmel" (HTK mel scale, as the filters)."""
        if self.kind == "linear":
            return self.linear_bins() * (self.sample_rate / self.n_fft)
        mels = np.linspace(_hz_to_mel(self.f_min), _hz_to_mel(self.band_top), self.n_mels + 2)[1:-1]
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)

    def time_bins(self, frames: int) -> np.ndarray:
        """Centre time (s) of each of `frames` frames: frame t is centred on sample t * hop_length."""
        return np.arange(frames) * (self.hop_length / self.sample_rate)

    @classmethod
    def from_dict(cls, values: object) -> "FeatureConfig":
        """From whatever a manifest or a config file holds: anything but an object of known names is refused."""
        if not isinstance(values, dict):
            raise ValueError(f"feature parameters must be an object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown feature parameters: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def fingerprint(self) -> str:
        """Short hash stored in every sample, so a reader can tell shards of other parameters apart."""
        return _fingerprint(self)

    @property
    def min_samples(self) -> int:
        """A centred STFT reflect-pads n_fft // 2 samples, which needs more samples than that."""
        return self.n_fft // 2 + 1


@functools.lru_cache(maxsize=16)
def _fingerprint(config: FeatureConfig) -> str:  # once per config, not once per file (it showed in profiles)
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def is_plain_finite(value: Any) -> bool:
    """A Python float or int (not a bool) that is a finite float: a configuration's or a manifest's number (an int
    past 1.8e308 would raise OverflowError where it is used)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) if isinstance(value, float) else abs(value) <= sys.float_info.max


def values_out_of_range(spec: np.ndarray) -> bool:
    """Whether a stored spectrogram (C-ordered, little-endian float16 or float32) holds NaN, an infinity or a
    value beyond VALUE_LIMIT. One pass over its bits with the sign cleared (NaN and infinities have the
    largest exponent), no float arithmetic: 16 us for 80 x 1,000 float16 values."""
    if not spec.size:
        return False
    bits = np.dtype(f"<u{spec.dtype.itemsize}")
    limit = int(np.array(VALUE_LIMIT[spec.dtype.name], dtype=spec.dtype).view(bits))
    magnitude = np.bitwise_and(spec.reshape(-1).view(bits), (1 << (8 * spec.dtype.itemsize - 1)) - 1)
    return int(magnitude.max()) > limit


def config_names() -> List[str]:
    """The configs shipped in spgdataset/configs/, by name (what `--config NAME` takes)."""
    return sorted(path.stem for path in CONFIGS.glob("*.json"))


def config_path(source: Union[str, Path]) -> Path:
    """A config file: `source` itself when it is one, else the shipped config of that name ("16k_80mel", with or
    without .json), so that `--config 16k_80mel` works from any folder."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = CONFIGS / f"{path.stem if path.suffix == '.json' else path.name}.json"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(config_names())
    raise ValueError(f"{source}: no such config file, and not the name of a config shipped with spgdataset "
                     f"({names}); give a JSON file's path or one of those names")


def load_config(source: Union[str, Path]) -> Dict[str, Any]:
    """Read a JSON config, a file or a shipped one by name (`config_path`): {"features": {...}, "windows": {...}}
    (both optional)."""
    path = config_path(source)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(values, dict) or not set(values) <= {"features", "windows"}:
        raise ValueError(f"{path}: a config is an object with 'features' and/or 'windows'")
    return values
