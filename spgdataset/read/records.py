"""What the reader's stages pass along: a decoded file with its kept windows, and what each window carries."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..format.features import STD_FLOOR
from ..format.manifest import Manifest
from .options import DatasetConfig


@dataclasses.dataclass
class FileRecord:
    """One decoded audio file from a shard. `spec` is a read-only (n_mels, T) view of the tar member."""

    key: str
    path: str
    spec: np.ndarray
    intervals: Dict[str, List[List[int]]]
    metadata: Dict[str, Any]
    starts: np.ndarray  # kept window starts, frames
    label: int = -1
    audio: Optional[np.ndarray] = None  # float32 samples at the feature rate
    offset: int = 0  # a segment of a long file: its first frame in the file (items report starts in the file)
    frame_labels: Optional[np.ndarray] = None  # int64 (T,): vak's frame labels (rules/framelabels.py), when asked

    @property
    def frames(self) -> int:
        return int(self.spec.shape[1])

    @property
    def nbytes(self) -> int:
        extra = [array.nbytes for array in (self.audio, self.frame_labels) if array is not None]
        return int(self.spec.nbytes + sum(extra))


@dataclasses.dataclass
class WindowSpec:
    """What each window carries and how it is shaped. Units: frames unless said otherwise."""

    window: int
    hop_length: int
    n_mels: int
    spectrogram: bool = True
    audio: bool = False
    masks: Sequence[str] = ()
    valid_mask: bool = False  # add masks["valid"]: False on padding of files shorter than a window
    meta: Sequence[str] = ()
    label: bool = False
    frame_labels: bool = False  # int64 (W,) per window: FileRecord.frame_labels, 0 on padding
    dtype: torch.dtype = torch.float32
    mean: Optional[torch.Tensor] = None  # (n_mels,) global normalisation
    std: Optional[torch.Tensor] = None
    per_window_norm: bool = False
    pad_value: float = 0.0  # log-mel of silence, used for padding before normalisation


def window_spec(config: DatasetConfig, manifest: Manifest) -> WindowSpec:
    """What each window of a dataset carries, from its configuration (and, to normalise with "global", the
    manifest's statistics)."""
    outputs, normalize, rule = config.outputs, config.reading.normalize, config.rule
    mean = std = None
    if normalize == "global":
        mean = torch.tensor(manifest.mean, dtype=torch.float32)
        std = torch.tensor(manifest.std, dtype=torch.float32).clamp_min(STD_FLOOR)
    return WindowSpec(
        window=rule.window, hop_length=rule.hop_length, n_mels=config.features.n_mels,
        spectrogram=outputs.spectrogram, audio=outputs.audio, masks=list(outputs.masks),
        valid_mask=rule.pad_short, meta=list(outputs.meta), label=outputs.label is not None,
        frame_labels=outputs.frame_labels, dtype=config.reading.dtype, mean=mean, std=std,
        per_window_norm=normalize == "window", pad_value=math.log(config.features.log_eps),
    )
