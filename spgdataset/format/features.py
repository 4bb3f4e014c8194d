"""Feature parameters: how audio becomes a log-mel spectrogram (the writer computes it: write/logmel.py)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Dict, Optional, Union

STORAGE_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes a log-mel spectrogram. Units: Hz and samples at `sample_rate`."""

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: Optional[float] = None
    log_eps: float = 1e-6
    storage_dtype: str = "float16"

    def __post_init__(self) -> None:
        problems = []
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            if type(getattr(self, name)) is not int or getattr(self, name) <= 0:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("f_min", "f_max", "log_eps"):
            value = getattr(self, name)
            if not (value is None and name == "f_max") and not _is_finite_number(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        if self.storage_dtype not in STORAGE_DTYPES:
            problems.append(f"storage_dtype must be one of {STORAGE_DTYPES}, got {self.storage_dtype!r}")
        if not problems:
            nyquist = self.sample_rate / 2
            f_max = nyquist if self.f_max is None else self.f_max
            if not 0 <= self.f_min < f_max <= nyquist:
                problems.append(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={f_max}")
            if self.log_eps <= 0:
                problems.append(f"log_eps must be positive, got {self.log_eps}")
        if problems:
            raise ValueError("bad feature configuration: " + "; ".join(problems))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "FeatureConfig":
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


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_config(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a JSON config from `configs/`: {"features": {...}, "windows": {...}} (both optional)."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config: {exc}") from None
    if not isinstance(values, dict) or not set(values) <= {"features", "windows"}:
        raise ValueError(f"{path}: a config is an object with 'features' and/or 'windows'")
    return values
