"""A dataset's configuration as frozen, typed values, built once from the constructor's arguments.

`DatasetArguments` is what the constructor was given, one field per parameter (the reference call adapts it,
reference.py). `configure` (config.py) checks it against the shard set and makes a `DatasetConfig`: the window
rule (rules/windows.py), what each item carries (`Outputs`), the split (`Split`), how items are batched and
ordered (`Batching`), how shards are read (`Reading`) and where this process sits in a DDP job (`Placement`).
Nothing changes them afterwards but the dataset itself (`set_batching`, for its loader).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..format.features import FeatureConfig
from ..rules.windows import WindowRule

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class DatasetArguments:
    """SpectrogramDataset's keyword arguments as given (docs/dataset.md: what each means)."""

    window_size_sec: Any
    window_offset_sec: Any
    window_content_ratio: Any
    content_intervals: Optional[Sequence[str]]
    sample_rate: Optional[int]
    hop_length: Optional[int]
    n_mels: Optional[int]
    n_fft: Optional[int]
    normalize: Any
    dtype: torch.dtype
    split: Sequence[float]
    subset: Optional[int]
    split_key: Optional[str]
    output_configuration: Optional[Mapping[str, Any]]
    max_memory_cache: int
    num_workers: int
    batch_size: Optional[int]
    drop_last: bool
    shuffle: bool
    seed: int
    shuffle_buffer: int
    file_buffer: int
    pad_short: bool
    rank: Optional[int]
    world_size: Optional[int]
    on_error: str
    verify: Any
    batch_threads: int
    check_names: bool
    audio_root: Optional[PathLike]
    spectrograms_root: Optional[PathLike]
    index_root: Optional[PathLike]
    metadata_json_path: Optional[PathLike]


@dataclasses.dataclass(frozen=True)
class Outputs:
    """What each window carries besides key, path and start."""

    spectrogram: bool = True
    audio: bool = False
    masks: Tuple[str, ...] = ("speech",)
    meta: Tuple[str, ...] = ()
    label: Optional[str] = None  # the metadata key whose value is the label
    frame_labels: bool = False  # vak's per-frame label numbers (rules/framelabels.py)


@dataclasses.dataclass(frozen=True)
class Split:
    """The split rule's parts, their cumulative bounds, which part this dataset is, and the unit's key."""

    parts: Tuple[float, ...]
    bounds: np.ndarray
    subset: int
    key: Optional[str]


@dataclasses.dataclass(frozen=True)
class Batching:
    """How an epoch's windows are ordered and grouped."""

    batch_size: Optional[int]
    drop_last: bool
    num_workers: int
    shuffle: bool
    seed: int
    shuffle_buffer: int  # windows per chunk shuffled together
    file_buffer: int  # places a file may move in its shard, per epoch (rules/order.py)
    batch_threads: int  # threads gathering batches in the training process


@dataclasses.dataclass(frozen=True)
class Reading:
    """How shards are read and values delivered: checks, what a bad shard does, the cache, normalisation."""

    on_error: str  # "raise" or "warn" (skip the shard, make its windows up)
    verify: Any  # True, False or "always"
    max_memory_cache: int  # bytes of decoded files kept per process
    normalize: Optional[str]  # "global", "window" or None
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class Placement:
    """Rank and world size as given; None asks torch.distributed, then torchrun's environment."""

    rank: Optional[int]
    world_size: Optional[int]

    def resolve(self) -> Tuple[int, int]:
        if self.rank is not None or self.world_size is not None:
            return int(self.rank or 0), int(self.world_size or 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Every choice of a dataset, checked against its shard set (config.py: configure)."""

    features: FeatureConfig  # the shard set's feature parameters
    rule: WindowRule
    outputs: Outputs
    split: Split
    batching: Batching
    reading: Reading
    placement: Placement


class ConfigValues:
    """The configuration's values most asked for, as properties of the dataset (and `set_batching`, the one
    change a dataset makes to its configuration: what its loader asks for)."""

    config: DatasetConfig

    @property
    def features(self) -> FeatureConfig:
        """The shard set's feature parameters (sample_rate, hop_length, n_mels, n_fft, kind, ...)."""
        return self.config.features

    @property
    def rule(self) -> WindowRule:
        return self.config.rule

    @property
    def sample_rate(self) -> int:
        return self.config.features.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.rule.hop_length

    @property
    def n_mels(self) -> int:
        return self.config.features.n_mels

    @property
    def window(self) -> int:
        """Frames of a window."""
        return self.config.rule.window

    @property
    def step(self) -> int:
        """Frames between window starts."""
        return self.config.rule.step

    @property
    def label_key(self) -> Optional[str]:
        return self.config.outputs.label

    @property
    def dtype(self) -> torch.dtype:
        return self.config.reading.dtype

    @property
    def batch_size(self) -> Optional[int]:
        return self.config.batching.batch_size

    @property
    def num_workers(self) -> int:
        return self.config.batching.num_workers

    @property
    def drop_last(self) -> bool:
        return self.config.batching.drop_last

    @property
    def batch_threads(self) -> int:
        return self.config.batching.batch_threads

    def set_batching(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> None:
        batching = self.config.batching
        changed = dataclasses.replace(batching, batch_size=batching.batch_size if batch_size is None else batch_size,
                                      num_workers=batching.num_workers if num_workers is None else num_workers)
        self.config = dataclasses.replace(self.config, batching=changed)
