"""What the reader's stages pass along: a decoded file with its kept windows, and what each window carries."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch


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

    @property
    def frames(self) -> int:
        return int(self.spec.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.spec.nbytes + (self.audio.nbytes if self.audio is not None else 0))


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
    dtype: torch.dtype = torch.float32
    mean: Optional[torch.Tensor] = None  # (n_mels,) global normalisation
    std: Optional[torch.Tensor] = None
    per_window_norm: bool = False
    pad_value: float = 0.0  # log-mel of silence, used for padding before normalisation
