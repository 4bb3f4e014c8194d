"""SpectrogramDataset: stream spg-shard shards into sliding windows, as a PyTorch IterableDataset.

Pipeline per rank and DataLoader worker:
  epoch plan of shards (plan.py) -> read tar (webdataset's tar expander + key grouping, sha256 checked while
  reading) -> decode npy views + msgpack (never pickle) -> keep this split's files -> shuffle files
  (webdataset's shuffle buffer) -> windows, shuffled per chunk and batched with one gather (batching.py).
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from .audio import decode_flac
from .batching import FileRecord, WindowSpec, iterate_windows
from .errors import ShardError, SpgError
from .plan import epoch_rng, shards_for
from .shardformat import AUDIO, INFO, SPEC, npy_view, unpack
from .source import HashingReader, ShardSet, Source, open_shard, open_source
from .splits import normalize_split, subset_of
from .windows import kept_starts, window_frames

log = logging.getLogger("spgdataset")

DEFAULT_OUTPUTS = {"audio": False, "spectrogram": True, "masks": ["speech"], "meta": [], "label": None}


class SpectrogramDataset(IterableDataset):
    """Sliding windows over the log-mel spectrograms of a shard set (see README for every parameter).

    Iterating yields one dict per window, or with `batch_size` one dict of stacked tensors per batch
    (the fast path: batches are built in the worker with one gather per output).
    """

    def __init__(
        self,
        source: Source,
        window_size_sec: float = 1.92,
        window_offset_sec: float = 0.1,
        window_content_ratio: float = 0.5,
        content_intervals: Optional[Sequence[str]] = None,
        sample_rate: Optional[int] = None,
        hop_length: Optional[int] = None,
        n_mels: Optional[int] = None,
        n_fft: Optional[int] = None,
        normalize: Any = True,
        dtype: torch.dtype = torch.float32,
        split: Sequence[float] = (1,),
        subset: int = 0,
        split_key: Optional[str] = None,
        output_configuration: Optional[Mapping[str, Any]] = None,
        max_memory_cache: int = 0,
        num_workers: int = 0,
        batch_size: Optional[int] = None,
        drop_last: bool = False,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 10000,
        file_buffer: int = 32,
        pad_short: bool = False,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        on_error: str = "raise",
        verify: bool = True,
    ) -> None:
        super().__init__()
        self.shards: ShardSet = open_source(source)
        features = self.shards.manifest["features"]
        for name, given in (("sample_rate", sample_rate), ("hop_length", hop_length), ("n_mels", n_mels),
                            ("n_fft", n_fft)):
            if given is not None and given != features[name]:
                raise ValueError(f"{name}={given} disagrees with the shards' {name}={features[name]} "
                                 f"({self.shards.root}); leave it None to take the shards' value")
        self.features = features
        self.sample_rate, self.hop_length, self.n_mels = features["sample_rate"], features["hop_length"], features["n_mels"]
        self.window = window_frames(window_size_sec, self.sample_rate, self.hop_length)
        self.step = window_frames(window_offset_sec, self.sample_rate, self.hop_length)
        self.window_content_ratio = float(window_content_ratio)
        outputs = dict(DEFAULT_OUTPUTS)
        outputs.update(output_configuration or {})
        unknown = sorted(set(outputs) - set(DEFAULT_OUTPUTS))
        if unknown:
            raise ValueError(f"unknown output_configuration keys: {unknown} (known: {sorted(DEFAULT_OUTPUTS)})")
        if outputs["audio"] and not self.shards.manifest.get("with_audio"):
            raise ValueError(f"output_configuration asks for audio, but the shards in {self.shards.root} were "
                             "written without it (rerun spg-shard with --with-audio)")
        self.outputs = outputs
        self.content_intervals = list(content_intervals if content_intervals is not None else outputs["masks"])
        self.label_key = outputs["label"]
        vocab = self.shards.manifest["labels"].get(self.label_key, []) if self.label_key else []
        self.label_vocabulary: List[Any] = list(vocab)
        self._label_ids = {_label_token(v): i for i, v in enumerate(vocab)}
        if normalize not in (True, False, None, "global", "window"):
            raise ValueError(f"normalize must be True/'global', 'window' or False, got {normalize!r}")
        self.normalize = "global" if normalize is True else (normalize or None)
        self.dtype = dtype
        self.split_bounds = normalize_split(split)
        if not 0 <= subset < len(self.split_bounds):
            raise ValueError(f"subset={subset} but split {tuple(split)} has {len(self.split_bounds)} subsets")
        self.split, self.subset, self.split_key = tuple(split), subset, split_key
        self.max_memory_cache = int(max_memory_cache)
        self.num_workers, self.batch_size, self.drop_last = num_workers, batch_size, drop_last
        self.shuffle, self.seed = shuffle, seed
        self.shuffle_buffer, self.file_buffer = shuffle_buffer, file_buffer
        self.pad_short = pad_short
        self._rank, self._world_size = rank, world_size
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
        self.on_error, self.verify = on_error, verify
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by persistent workers
        self._cache: Dict[str, FileRecord] = {}
        self._cache_bytes = 0
        self.shard_opens = 0  # shards opened by this process (the memory cache test counts these)
        self.errors: List[str] = []
        self._windows_per_shard = self._count_windows()

    # ------------------------------------------------------------ plan and sizes

    @property
    def rank_world(self) -> Tuple[int, int]:
        """From the arguments, else an initialised torch.distributed group, else torchrun's environment."""
        if self._rank is not None or self._world_size is not None:
            return int(self._rank or 0), int(self._world_size or 1)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: every order in an epoch derives from (seed, epoch, rank, worker)."""
        self._epoch[0] = int(epoch)

    def in_subset(self, path: str, metadata: Mapping[str, Any]) -> bool:
        return len(self.split_bounds) == 1 or subset_of(path, metadata, self.split_bounds, self.split_key) == self.subset

    def file_windows(self, frames: int, intervals: Mapping[str, Any]) -> np.ndarray:
        """Window starts of one file: the single rule used by both len() and iteration."""
        return kept_starts(frames, intervals, self.window, self.step, self.hop_length,
                           self.content_intervals, self.window_content_ratio, self.pad_short)

    def _count_windows(self) -> List[int]:
        counts = []
        for shard in self.shards.shards:
            rows = self.shards.files_by_shard[shard["name"]]
            counts.append(sum(len(self.file_windows(r["frames"], r["intervals"]))
                              for r in rows if self.in_subset(r["path"], r["metadata"])))
        return counts

    def windows(self) -> List[Tuple[str, int]]:
        """Every (key, start) of this subset, computed from the index alone (no shard is opened)."""
        out = []
        for shard in self.shards.shards:
            for row in self.shards.files_by_shard[shard["name"]]:
                if self.in_subset(row["path"], row["metadata"]):
                    out.extend((row["key"], int(s)) for s in self.file_windows(row["frames"], row["intervals"]))
        return out

    def num_windows(self) -> int:
        """Windows of this subset in one epoch across all ranks."""
        return sum(self._windows_per_shard)

    def _plan(self, worker: int, num_workers: int) -> List[int]:
        rank, world = self.rank_world
        return shards_for(len(self.shards.shards), self.seed, self.epoch, self.shuffle, rank, world, worker,
                          num_workers, fixed_assignment=self.max_memory_cache > 0)

    def __len__(self) -> int:
        """Items this rank yields per epoch: windows, or with batch_size the batches of all its workers."""
        workers = max(self.num_workers, 1)
        per_worker = [sum(self._windows_per_shard[k] for k in self._plan(w, workers)) for w in range(workers)]
        if self.batch_size is None:
            return sum(per_worker)
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(n / self.batch_size) for n in per_worker)

    # ------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.num_workers not in (0, info.num_workers):
            log.warning("dataset built with num_workers=%d but runs in %d workers; len() will be off",
                        self.num_workers, info.num_workers)
        rank, _ = self.rank_world
        epoch = self.epoch
        files = self._files(self._plan(worker, num_workers))
        if self.shuffle:
            rng = random.Random(int(epoch_rng(self.seed, epoch, rank, worker, 1).integers(2**62)))
            files = wds.filters._shuffle(files, bufsize=self.file_buffer, initial=self.file_buffer, rng=rng)
        window_rng = epoch_rng(self.seed, epoch, rank, worker, 2) if self.shuffle else None
        yield from iterate_windows(files, self._window_spec(), self.shuffle_buffer, self.batch_size,
                                   self.drop_last, window_rng)

    def _window_spec(self) -> WindowSpec:
        mean = std = None
        if self.normalize == "global":
            stats = self.shards.manifest["stats"]
            mean = torch.tensor(stats["mean"], dtype=torch.float32)
            std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(1e-5)
        return WindowSpec(
            window=self.window, hop_length=self.hop_length, n_mels=self.n_mels,
            spectrogram=bool(self.outputs["spectrogram"]), audio=bool(self.outputs["audio"]),
            masks=list(self.outputs["masks"] or []), valid_mask=self.pad_short, meta=list(self.outputs["meta"] or []),
            label=self.label_key is not None, dtype=self.dtype, mean=mean, std=std,
            per_window_norm=self.normalize == "window", pad_value=math.log(self.features["log_eps"]),
        )

    def _files(self, shard_numbers: List[int]) -> Iterator[FileRecord]:
        for k in shard_numbers:
            shard = self.shards.shards[k]
            if self._windows_per_shard[k] == 0:
                continue
            rows = [r for r in self.shards.files_by_shard[shard["name"]] if self.in_subset(r["path"], r["metadata"])]
            cached = [self._cache.get(r["key"]) for r in rows]
            if rows and all(c is not None for c in cached):
                yield from cached
                continue
            yield from self._read_shard(shard)

    def _read_shard(self, shard: Dict[str, Any]) -> Iterator[FileRecord]:
        url = self.shards.url(shard)
        try:
            stream = HashingReader(open_shard(url))
        except ShardError as exc:
            yield from self._fail(exc)
            return
        self.shard_opens += 1
        seen = 0
        try:
            samples = group_by_keys(tar_file_expander([{"url": url, "stream": stream}]))
            for sample in samples:
                record = self._decode(url, sample)
                seen += 1
                if record is not None:
                    yield record
            digest = stream.drain()
        except ShardError as exc:
            yield from self._fail(exc)
            return
        except Exception as exc:
            yield from self._fail(ShardError(f"{url}: truncated or corrupt shard after {seen} files: "
                                             f"{_first_line(exc)}"))
            return
        finally:
            stream.close()
        if seen != shard["files"]:
            yield from self._fail(ShardError(f"{url}: holds {seen} files, the manifest says {shard['files']} "
                                             "(truncated or replaced shard)"))
        elif self.verify and digest != shard["sha256"]:
            yield from self._fail(ShardError(f"{url}: sha256 {digest[:12]}... disagrees with the manifest's "
                                             f"{shard['sha256'][:12]}... (shard changed since it was written)"))

    def _fail(self, error: ShardError) -> Iterator[FileRecord]:
        self.errors.append(str(error))
        if self.on_error == "raise":
            raise error
        log.warning("skipping: %s", error)
        return iter(())

    def _decode(self, url: str, sample: Dict[str, Any]) -> Optional[FileRecord]:
        key = sample.get("__key__")
        if INFO not in sample or SPEC not in sample:
            raise ShardError(f"{url}: sample {key!r} lacks {INFO if INFO not in sample else SPEC}")
        info = unpack(sample[INFO])
        if info.get("params") != self.shards.manifest["params"]:
            raise ShardError(f"{url}: sample {key!r} was written with other feature parameters than the manifest's")
        if not self.in_subset(info["path"], info["metadata"]):
            return None
        spec = npy_view(sample[SPEC])
        if spec.shape != (self.n_mels, info["frames"]):
            raise ShardError(f"{url}: sample {key!r} spectrogram shape {spec.shape}, expected "
                             f"({self.n_mels}, {info['frames']})")
        audio = None
        if self.outputs["audio"]:
            if AUDIO not in sample:
                raise ShardError(f"{url}: sample {key!r} has no audio member")
            audio = decode_flac(sample[AUDIO])
        label = self._label_ids.get(_label_token(info["metadata"].get(self.label_key)), -1) if self.label_key else -1
        record = FileRecord(key, info["path"], spec, info["intervals"], info["metadata"],
                            self.file_windows(info["frames"], info["intervals"]), label, audio)
        if self.max_memory_cache and key not in self._cache and self._cache_bytes + record.nbytes <= self.max_memory_cache:
            self._cache[key] = record
            self._cache_bytes += record.nbytes
        return record

    # ------------------------------------------------------------ loader

    def loader(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
               pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
               **kwargs: Any) -> DataLoader:
        """A DataLoader set up for this dataset: batches built in the workers, workers kept across epochs."""
        if batch_size is not None:
            self.batch_size = batch_size
        if self.batch_size is None:
            raise ValueError("loader() needs a batch_size (here or in the constructor)")
        if num_workers is not None:
            self.num_workers = num_workers
        workers = self.num_workers
        return DataLoader(
            self, batch_size=None, num_workers=workers,
            pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
            persistent_workers=workers > 0 if persistent_workers is None else persistent_workers,
            prefetch_factor=kwargs.pop("prefetch_factor", 4) if workers > 0 else None, **kwargs,
        )


def _label_token(value: Any) -> Tuple[str, Any]:
    """Label lookup key that keeps 1, True and "1" apart."""
    return (type(value).__name__, value)


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
