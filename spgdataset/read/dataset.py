"""SpectrogramDataset: stream spg-shard shards into sliding windows, as a PyTorch IterableDataset.

The dataset wires the reader's parts together: the source (source.py), its configuration checked against the
shard set (config.py, options.py) and the subset's window counts (selection.py) at construction; per epoch and
worker the plan (rules/plan.py), then the stages (stages.py: read + check + decode, restrict, shuffle files;
batching.py: window batches). `iter_epoch` is that chain for any (epoch, worker) and resume point; the
epoch-stream protocol it implements (stream.py) adds what a DataLoader needs.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ShardError
from ..format.index import BadIndex
from ..rules import elastic
from ..rules.elastic import Stage
from ..rules.order import EpochOrder, epoch_order
from ..rules.windows import kept_starts
from .access import WindowDataset
from .batching import chunk_plan, first_chunk_windows, iterate_windows
from .chunks import Chunk, built_chunks
from .config import configure
from .decode import ShardReader
from .errorlog import SharedErrorLog
from .framelabels import frame_labeller, labelmap_of
from .memory import ChunkMemory
from .nextepoch import NextEpoch
from .options import ConfigValues, DatasetArguments, DatasetConfig
from .perprocess import PerProcess
from .records import FileRecord, WindowSpec, window_spec
from .reference import build, is_reference_call, take_positions
from .selection import Selection, select
from .source import ShardSet, Source, open_source
from .stages import ChunkInput, first_reads, slot_chunks
from .states import DATASET_FIELDS
from .stream import EpochStream, Items
from .summary import Summary, all_windows, no_window_reason, one_line, summarize
from .transport import PLAIN, Transport


class SpectrogramDataset(ConfigValues, EpochStream):
    """Sliding windows over the spectrograms of a shard set, with their masks, labels and metadata.

    Iterating yields one dict per window, or with `batch_size` one dict of stacked tensors per batch (the fast
    path: a batch is one gather per output, built in the DataLoader worker). docs/dataset.md: what each holds.

    Args:
        source: a shard folder, a manifest.json path or a list of shards (local or s3://). Positional arguments
            after it, and the keywords `audio_root`, `spectrograms_root`, `index_root` and `metadata_json_path`,
            make the reference call, which writes the shards of an audio folder first, once.
        window_size_sec, window_offset_sec: window length and step, rounded to whole frames.
        window_content_ratio: in [0, 1]; an annotated file's window is kept when at least this share of its
            frames lies in `content_intervals`.
        content_intervals: interval names that count as content (None: the masks of `output_configuration`).
        sample_rate, hop_length, n_mels, n_fft: checks against the shards' parameters (None: take theirs).
        normalize: True or "global" (the manifest's per-bin mean and std), "window" (each window on its own), or
            False.
        dtype: dtype of the spectrograms yielded.
        split, subset, split_key: the split rule's parts, which part this dataset is, and the metadata key
            whose values are kept in one part (None: each file on its own).
        output_configuration: {"audio", "spectrogram", "masks", "meta", "label"}: what each item carries.
        max_memory_cache: bytes of decoded files kept per process across epochs (0: none).
        num_workers: DataLoader workers that `loader()` uses and `len()` assumes.
        batch_size, drop_last: batches built by the dataset (None: single windows); drop the last partial one.
        shuffle, seed: an epoch's order derives from (seed, epoch) alone; ranks and workers take ranges of it.
        shuffle_buffer: windows per chunk shuffled together. file_buffer: how many places a file may move in its
            shard, per epoch (rules/order.py).
        pad_short: a file shorter than a window yields one window padded with silence (and a "valid" mask).
        rank, world_size: this process in a DDP job (None: torch.distributed, then torchrun's environment).
        on_error: "raise", or "warn" to skip a corrupt or truncated shard, log it and make up its windows.
        verify: check each shard's sha256 (a local shard once per process while it is unchanged), "always", or
            False.
        batch_threads: threads gathering batches when iterated in the training process (2: about 15% faster for
            50% more CPU; docs/performance.md).
        check_names: False accepts mask, label, meta and split_key names the shards do not have (yet).
    """

    kind = "dataset"
    state_fields = DATASET_FIELDS
    config: DatasetConfig

    def __init__(
        self,
        source: Optional[Source] = None,
        *reference_args: Any,
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
        subset: Optional[int] = None,
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
        verify: Any = True,
        batch_threads: int = 1,
        check_names: bool = True,
        audio_root: Optional[Union[str, os.PathLike]] = None,
        spectrograms_root: Optional[Union[str, os.PathLike]] = None,
        index_root: Optional[Union[str, os.PathLike]] = None,
        metadata_json_path: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        """`SpectrogramDataset(source, ...)` streams shards written by spg-shard; the reference call writes the
        shards of an audio folder first, once (reference.py). Every parameter is described in the class
        docstring and in docs/dataset.md."""
        super().__init__()
        args = DatasetArguments(
            window_size_sec, window_offset_sec, window_content_ratio, content_intervals, sample_rate, hop_length,
            n_mels, n_fft, normalize, dtype, split, subset, split_key, output_configuration, max_memory_cache,
            num_workers, batch_size, drop_last, shuffle, seed, shuffle_buffer, file_buffer, pad_short, rank,
            world_size, on_error, verify, batch_threads, check_names, audio_root, spectrograms_root, index_root,
            metadata_json_path)
        if is_reference_call(reference_args, args):
            args = take_positions(source, reference_args, args, PARAMETER_DEFAULTS)
            source, args = build(args)
        elif source is None:
            raise TypeError("SpectrogramDataset() needs a source: a shard folder, a manifest.json path or a list "
                            "of shards (or the reference call: audio_root, spectrograms_root, index_root, ...)")
        self.shards: ShardSet = open_source(source)
        self.config = configure(self.shards, args)
        self._setup()

    def _setup(self) -> None:
        """What reading needs, from the configuration: the subset's files and window counts, the shard reader."""
        labels = self.shards.index.metadata.get(self.label_key) if self.label_key is not None else None
        self.label_vocabulary: List[Any] = list(labels.vocabulary) if labels is not None else []
        self._label_ids = labels.ids if labels is not None else None
        self.error_log = SharedErrorLog(max(self.num_workers, 64))  # skipped shards, seen from every worker
        self.selection = self._select()
        self.no_windows = no_window_reason(self)  # None, or why this subset yields nothing
        if self.no_windows:
            warnings.warn(self.no_windows, stacklevel=3)
        self.reader = ShardReader(self.shards, self.file_windows, self._label_id, self.config.outputs.audio,
                                  self.config.reading, self.error_log, frame_labeller(self.shards, self.config))
        self._memory = PerProcess(ChunkMemory)  # chunk buffers, reused across epochs in this process
        self._next = PerProcess(NextEpoch)  # the next epoch's first files, read while this one drains
        self._windows_digest: Optional[str] = None
        self._orders: Dict[Tuple[Any, ...], EpochOrder] = {}  # the last two epochs' orders, by (epoch, batching)

    def _select(self) -> Selection:
        """The subset's files and window counts, from the index columns (selection.py)."""
        split = self.config.split
        try:
            return select(self.shards.index, len(self.shards.manifest.shards), self.shards.selected,
                          split.bounds, split.subset, split.key, self.rule)
        except BadIndex as exc:
            raise ShardError(f"{self.shards.index_path}: {exc}") from None

    def _label_id(self, position: int) -> int:
        return int(self._label_ids[position]) if self._label_ids is not None else -1

    # ------------------------------------------------------------ sizes and plans

    @property
    def labelmap(self) -> Dict[str, int]:
        """What frame labels' numbers mean: "background" 0, the labelset or interval names sorted from 1."""
        return labelmap_of(self.shards)


    @property
    def rank_world(self) -> Tuple[int, int]:
        """From the arguments, else an initialised torch.distributed group, else torchrun's environment."""
        return self.config.placement.resolve()

    def file_windows(self, frames: int, intervals: Mapping[str, Any], position: int) -> np.ndarray:
        """Window starts of the file at index `position` (in its own frames; a segment's are local): the single
        rule used by both len() and iteration."""
        index = self.shards.index
        offset, owned = index.segment_of(position)
        return kept_starts(self.rule, frames, intervals, offset, owned, bool(index.annotated[position]))

    def num_windows(self) -> int:
        """Windows of this subset in one epoch (all ranks together, before the equal-share trim)."""
        return self.selection.total()

    def windows(self) -> List[Tuple[str, int]]:
        """Every (key, start) of this subset, from the index alone (no shard is opened). One tuple per window:
        at a million files, prefer `selection.files` and `selection.counts` (arrays)."""
        return all_windows(self)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return self.map_style()[i]  # window i: the i-th of an epoch with shuffle=False in one process (access.py)

    def map_style(self) -> WindowDataset:
        """This subset's windows as a map-style torch Dataset, for any sampler; one per dataset (it keeps its files)."""
        if "_access" not in self.__dict__:
            self._access = WindowDataset(self, self._window_spec())
        return self._access

    @property
    def world_size(self) -> int:
        return self.rank_world[1]

    def worker_windows(self, worker: int, num_workers: int, history: Sequence[Stage] = ()) -> int:
        """Windows one DataLoader worker of this rank yields per epoch (full batches only with drop_last), in the
        stage after `history` (rules/elastic.py)."""
        return self.layout_windows(self.world_size, num_workers, 0, history)[worker]

    def layout_windows(self, world: int, num_workers: int, epoch: int, history: Sequence[Stage] = ()) -> List[int]:
        windows = elastic.worker_windows(self.num_windows(), history, world, num_workers)
        if self.batch_size and self.drop_last:
            windows = [n // self.batch_size * self.batch_size for n in windows]
        return windows

    def epoch_order(self, epoch: int) -> EpochOrder:
        """The canonical order of `epoch` (rules/order.py), kept for the epoch being read."""
        batching, selection = self.config.batching, self.selection
        key = (epoch, batching)  # set_batching changes the ramp's first chunk; the selection is fixed at construction
        order = self._orders.get(key)
        if order is None:  # (also made in the background for the next epoch: nextepoch.py)
            order = epoch_order(selection.bounds, selection.counts, batching.seed, epoch, batching.shuffle,
                                batching.file_buffer, batching.shuffle_buffer, first_chunk_windows(batching.batch_size),
                                fixed_shards=self.config.reading.max_memory_cache > 0)
            self._orders = dict(list(self._orders.items())[-1:] + [(key, order)])
        return order

    def plan_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1,
                   history: Sequence[Stage] = ()) -> np.ndarray:
        """This worker's ranges [lo, hi) of the epoch's order (rules/elastic.py, rules/order.py)."""
        rank, world = self.rank_world
        return elastic.slot_ranges(self.num_windows(), history, rank, world, worker, num_workers)

    # ------------------------------------------------------------ reading

    def iter_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1, skip_windows: int = 0,
                   drop_last: Optional[bool] = None, transport: Transport = PLAIN,
                   history: Sequence[Stage] = ()) -> Items:
        """Epoch `epoch` as worker `worker` of `num_workers` of this rank yields it in the stage after `history`,
        without its first `skip_windows` windows (not built). Re-entrant: it reads and changes nothing of the
        dataset's epoch or resume state (a router runs several at once). `drop_last`: None takes the dataset's.
        `transport` (transport.py): where batches' memory comes from, how many threads gather them."""
        batching = self.config.batching
        drop_last = batching.drop_last if drop_last is None else drop_last
        return iterate_windows(self._chunk_inputs(epoch, worker, num_workers, skip_windows, transport, history),
                               self._window_spec(), batching.batch_size, drop_last, transport, self._memory.get())

    def iter_chunks(self, epoch: int, worker: int = 0, num_workers: int = 1, skip_windows: int = 0,
                    transport: Transport = PLAIN, history: Sequence[Stage] = ()) -> Iterator[Chunk]:
        """What `iter_epoch` yields, as chunks in their order before they are cut into batches: the router gathers
        its batches from several datasets' chunks at once (chunks.take_parts)."""
        return built_chunks(self._chunk_inputs(epoch, worker, num_workers, skip_windows, transport, history),
                            self._window_spec(), self._memory.get())

    def _chunk_inputs(self, epoch: int, worker: int, num_workers: int, skip_windows: int, transport: Transport,
                      history: Sequence[Stage]) -> Iterator[ChunkInput]:
        ranges = self.plan_epoch(epoch, worker, num_workers, history)
        ranges = elastic.cut(ranges, skip_windows, elastic.length_of(ranges))
        self.reader.new_pass()
        thread = transport.shard_thread(self.shards.storage.local)  # else local shards are named to the kernel
        hint = (lambda j: self.shards.will_read(self.selection.shards[j])) if transport.shards_ahead and not thread \
            else None
        return slot_chunks(self.epoch_order(epoch), ranges, self.selection.bounds, self._read, self.error_log.filled,
                           self.shards.root, thread, hint)

    def _read(self, j: int, ids: np.ndarray, alone: bool = False) -> Optional[List[FileRecord]]:
        """Files `ids` (selection ids, ascending) of selected shard j (None: the shard was skipped); `alone`: each
        by its own byte range (decode.py), or as read ahead of this epoch (nextepoch.py)."""
        next_epoch = self._next.get()
        with next_epoch.lock:  # after the background reading of this epoch's first files, if any
            records = next_epoch.take(j, ids) if alone else None
            if records is None:
                records = self.reader.read(self.selection.shards[j], self.selection.files[ids].tolist(), alone)
            return records

    def after_epoch(self, epoch: int, worker: int, num_workers: int) -> None:
        """The epoch most likely next, its order and this worker's first files, prepared in the background."""
        if self.shards.index.members is not None:
            next_epoch = self._next.get()
            next_epoch.prepare(lambda e: self._first_reads(e, worker, num_workers), next_epoch.guesses(epoch))

    def _first_reads(self, epoch: int, worker: int, num_workers: int) -> Iterator[Tuple[int, np.ndarray, Any]]:
        """The reads of single files that start `epoch` for this worker (stages.first_reads), not cached ones."""
        reader, selection = self.reader, self.selection
        for j, ids in first_reads(self.epoch_order(epoch), self.plan_epoch(epoch, worker, num_workers),
                                  selection.bounds):
            k, positions = int(selection.shards[j]), selection.files[ids].tolist()
            if not all(p in reader.cache for p in positions):
                yield j, ids, functools.partial(reader.files_alone, k, positions)

    def _window_spec(self) -> WindowSpec:
        return window_spec(self.config, self.shards.manifest)

    # ------------------------------------------------------------ resume

    def shard_digest(self) -> str:
        """Identifies the shard selection (names and sha256): what a saved epoch position belongs to."""
        text = "\n".join(f"{s.name} {s.sha256}" for s in self.shards.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def windows_digest(self) -> str:
        """Identifies this subset's window counts per file (split, window rule and index all show in them)."""
        if self._windows_digest is None:
            self._windows_digest = hashlib.sha256(self.selection.counts.astype("<i8").tobytes()).hexdigest()[:16]
        return self._windows_digest

    def plan_inputs(self) -> Dict[str, Any]:
        """What this dataset's epoch plan depends on (a saved state must agree)."""
        return {"seed": self.config.batching.seed, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "world_size": self.rank_world[1], "shards": self.shard_digest(), "window": [self.window, self.step],
                "windows": self.windows_digest(), "chunks": chunk_plan(self.config.batching)}

    def summary(self) -> Summary:
        """Files, hours and windows of every subset of the split, the label balance of this one, and its files
        that yield no window and why (summary.py); print it to read it."""
        return summarize(self)

    def __repr__(self) -> str:
        return one_line(self)

    # ------------------------------------------------------------ errors and counters

    @property
    def filled_windows(self) -> int:
        """Windows repeated to make up for skipped shards' windows, all epochs."""
        return self.error_log.totals()[1]

    def error_logs(self) -> List[SharedErrorLog]:
        return [self.error_log]

    @property
    def shard_opens(self) -> int:
        """Shards opened by this process (the memory cache spares them in later epochs)."""
        return self.reader.opens

    def ring_shape(self) -> Tuple[Tuple[int, ...], torch.dtype]:
        """(shape, dtype) of a batch's spectrogram: the slots the loader shares with its workers."""
        return (self.batch_size or 1, self.n_mels, self.window), self.dtype


PARAMETER_DEFAULTS = {name: p.default for name, p in inspect.signature(SpectrogramDataset.__init__).parameters.items()
                      if p.default is not inspect.Parameter.empty}
