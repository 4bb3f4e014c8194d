"""SpectrogramDataset: stream spg-shard shards into sliding windows, as a PyTorch IterableDataset.

The dataset wires the reader's parts together: the source (source.py) and the subset's window counts
(selection.py) at construction; per epoch and worker the plan (rules/plan.py), then the stages
(stages.py: read + check + decode, restrict, shuffle files, window batches, hand-off). `iter_epoch` is that
chain for any (epoch, worker) and resume point; `__iter__` adds what a DataLoader needs: which worker this
is, which role it plays after a restart, and the count of items consumed (cursor.py).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
import warnings
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset

from ..errors import ShardError
from ..format.features import STD_FLOOR
from ..format.index import BadIndex
from ..rules.plan import Pieces, batches, epoch_rng, shard_order, slot_pieces, slot_range
from ..rules.windows import kept_starts
from .batching import FileRecord, WindowSpec, iterate_windows, one_thread
from .config import check_features, check_names, choice, content_ratio, outputs_of, split_of, window_length
from .cursor import EpochCursor, current_worker
from .decode import ShardReader
from .errorlog import SharedErrorLog
from .loader import SpectrogramLoader, make_loader
from .memory import ChunkMemory
from .prefetch import read_ahead
from .reference import build, is_reference_call, take_positions
from .ring import BatchRing
from .selection import Selection, WindowRule, select
from .source import ShardSet, Source, open_source
from .stages import ShardPlan, hand_off, planned_files, shuffle_files
from .states import DATASET_FIELDS, check_fields
from .summary import Summary, no_window_reason, one_line, summarize

log = logging.getLogger("spgdataset")


class SpectrogramDataset(IterableDataset):
    """Sliding windows over the log-mel spectrograms of a shard set (see README for every parameter).

    Iterating yields one dict per window, or with `batch_size` one dict of stacked tensors per batch
    (the fast path: batches are built in the worker with one gather per output).
    """

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
        batch_threads: int = 2,
        check_names: bool = True,
        audio_root: Optional[Union[str, os.PathLike]] = None,
        spectrograms_root: Optional[Union[str, os.PathLike]] = None,
        index_root: Optional[Union[str, os.PathLike]] = None,
        metadata_json_path: Optional[Union[str, os.PathLike]] = None,
    ) -> None:
        """`SpectrogramDataset(source, ...)` streams shards written by spg-shard (a folder, a manifest path or a
        shard list, local or s3://). The reference call, `SpectrogramDataset(audio_root, spectrograms_root,
        index_root, metadata_json_path=None, sample_rate=16000, ...)` with the reference's positions, writes the
        shards of an audio folder first, once (reference.py). README: every parameter."""
        super().__init__()
        options = {k: v for k, v in locals().items() if k not in ("self", "source", "reference_args", "__class__")}
        if is_reference_call(reference_args, options):
            take_positions(source, reference_args, options, PARAMETER_DEFAULTS)
            source = build(options)
        elif source is None:
            raise TypeError("SpectrogramDataset() needs a source: a shard folder, a manifest.json path or a list "
                            "of shards (or the reference call: audio_root, spectrograms_root, index_root, ...)")
        self.shards: ShardSet = open_source(source)
        self._configure(options)

    def _configure(self, o: Dict[str, Any]) -> None:
        """Every choice, checked against the shard set (config.py), then what reading needs."""
        self.features = check_features(self.shards, o)
        self.sample_rate, self.hop_length = self.features["sample_rate"], self.features["hop_length"]
        self.n_mels = self.features["n_mels"]
        self.window = window_length("window_size_sec", o["window_size_sec"], self.sample_rate, self.hop_length)
        self.step = window_length("window_offset_sec", o["window_offset_sec"], self.sample_rate, self.hop_length)
        segments = self.shards.manifest.get("segments")
        if segments and self.window > segments["overlap"]:
            raise ValueError(f"window_size_sec={o['window_size_sec']} is {self.window} frames; the long files of "
                             f"{self.shards.root} are stored in segments that overlap by {segments['overlap']} frames, "
                             "so a window can be at most that long (rewrite them with longer overlaps)")
        self.window_content_ratio = content_ratio("window_content_ratio", o["window_content_ratio"])
        self.pad_short = o["pad_short"]
        check_names(self.shards, o["output_configuration"], o["content_intervals"], o["split_key"], o["check_names"])
        self.outputs = outputs_of(self.shards, o["output_configuration"])
        given_content = o["content_intervals"]
        self.content_intervals = list(given_content if given_content is not None else self.outputs["masks"])
        self.label_key = self.outputs["label"]
        labels = self.shards.index.metadata.get(self.label_key) if self.label_key is not None else None
        self.label_vocabulary: List[Any] = list(labels.vocabulary) if labels is not None else []
        self._label_ids = labels.ids if labels is not None else None
        self.split, self.split_bounds, self.subset = split_of(o["split"], o["subset"])
        self.split_key = o["split_key"]
        normalize = choice("normalize", o["normalize"], (True, False, None, "global", "window"))
        self.normalize, self.dtype = "global" if normalize is True else (normalize or None), o["dtype"]
        self.max_memory_cache = int(o["max_memory_cache"])
        self.num_workers, self.batch_size, self.drop_last = o["num_workers"], o["batch_size"], o["drop_last"]
        self.shuffle, self.seed = o["shuffle"], o["seed"]
        self.shuffle_buffer, self.file_buffer = o["shuffle_buffer"], o["file_buffer"]
        self._rank, self._world_size = o["rank"], o["world_size"]
        self.on_error = choice("on_error", o["on_error"], ("raise", "warn"))
        self.verify = choice("verify", o["verify"], (True, False, "always"))
        self.batch_threads = max(1, int(o["batch_threads"]))
        self.cursor = EpochCursor()  # epoch and resume point, seen by persistent workers
        self.error_log = SharedErrorLog(max(self.num_workers, 64))  # skipped shards, seen from every worker
        self.rule = WindowRule(self.window, self.step, self.hop_length, self.content_intervals,
                               self.window_content_ratio, self.pad_short)
        self.selection = self._select()
        self.no_windows = no_window_reason(self)  # None, or why this subset yields nothing
        if self.no_windows:
            warnings.warn(self.no_windows, stacklevel=3)
        self.reader = ShardReader(self.shards, self.file_windows, self._label_id, bool(self.outputs["audio"]),
                                  self.verify, self.on_error, self.error_log, self.max_memory_cache)
        self._memory = (os.getpid(), ChunkMemory())  # chunk buffers, reused across epochs in this process
        self._windows_digest: Optional[str] = None

    def _select(self) -> Selection:
        """The subset's files and window counts, from the index columns (selection.py)."""
        try:
            return select(self.shards.index, len(self.shards.manifest["shards"]), self.shards.selected,
                          self.split_bounds, self.subset, self.split_key, self.rule)
        except BadIndex as exc:
            raise ShardError(f"{self.shards.index_path}: {exc}") from None

    def _label_id(self, position: int) -> int:
        return int(self._label_ids[position]) if self._label_ids is not None else -1

    # ------------------------------------------------------------ sizes and plans

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
        return self.cursor.epoch

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: every order in an epoch derives from (seed, epoch, rank, worker)."""
        self.cursor.set_epoch(epoch)

    def file_windows(self, frames: int, intervals: Mapping[str, Any], position: int) -> np.ndarray:
        """Window starts of the file at index `position` (in its own frames; a segment's are local): the single
        rule used by both len() and iteration."""
        index = self.shards.index
        offset, owned = index.segment_of(position)
        return kept_starts(frames, intervals, self.window, self.step, self.hop_length, self.content_intervals,
                           self.window_content_ratio, self.pad_short, phase=-offset % self.step, owned=owned,
                           annotated=bool(index.annotated[position]))

    def num_windows(self) -> int:
        """Windows of this subset in one epoch (all ranks together, before the equal-share trim)."""
        return self.selection.total()

    def windows(self) -> List[Tuple[str, int]]:
        """Every (key, start) of this subset, from the index alone (no shard is opened). One tuple per window:
        at a million files, prefer `selection.files` and `selection.counts` (arrays)."""
        index, out = self.shards.index, []
        for position in self.selection.files.tolist():
            key = index.keys[position]
            offset = index.segment_of(position)[0]
            out += [(key, offset + int(s))
                    for s in self.file_windows(int(index.frames[position]), index.intervals_of(position), position)]
        return out

    def worker_windows(self, worker: int, num_workers: int) -> int:
        """Windows one DataLoader worker of this rank yields per epoch (full batches only with drop_last)."""
        rank, world = self.rank_world
        lo, hi = slot_range(self.num_windows(), rank, world, worker, num_workers)
        n = hi - lo
        if self.batch_size and self.drop_last:
            n = n // self.batch_size * self.batch_size
        return int(n)

    def worker_items(self, num_workers: int) -> List[int]:
        """Items (batches, or windows without batch_size) each of `num_workers` workers yields per epoch."""
        rank, world = self.rank_world
        sizes = [hi - lo for lo, hi in (slot_range(self.num_windows(), rank, world, w, num_workers)
                                        for w in range(num_workers))]
        return [batches(n, self.batch_size or 1, self.drop_last) for n in sizes]

    def __len__(self) -> int:
        """Items this rank yields per epoch: windows, or with batch_size the batches of all its workers.

        Equal on every rank: each rank's share of the epoch's windows is the same size.
        """
        return sum(self.worker_items(max(self.num_workers, 1)))

    def plan_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1) -> ShardPlan:
        """This worker's shards (positions in the selection) and file window ranges for `epoch` (plan.py).

        With a memory cache the assignment is the one of epoch 0 every epoch (only the reading order
        changes), so that each worker finds its files in its own cache.
        """
        rank, world = self.rank_world
        fixed = self.max_memory_cache > 0
        order = shard_order(len(self.selection.shards), self.seed, 0 if fixed else epoch, self.shuffle)
        lo, hi = slot_range(self.num_windows(), rank, world, worker, num_workers)
        plan = slot_pieces(order, self.selection.bounds, self.selection.counts, lo, hi)
        if fixed and self.shuffle:
            plan = [plan[i] for i in epoch_rng(self.seed, epoch, rank, worker, 3).permutation(len(plan))]
        return plan

    # ------------------------------------------------------------ reading

    def iter_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1, skip_windows: int = 0,
                   drop_last: Optional[bool] = None, *, ring: Optional[BatchRing] = None,
                   ring_worker: int = 0) -> Iterator[Dict[str, Any]]:
        """Epoch `epoch` as worker `worker` of `num_workers` of this rank yields it, leaving out the first
        `skip_windows` windows exactly as that worker would have yielded them (without building them).

        Re-entrant: it reads nothing of the dataset's epoch or resume state and changes none of it (only the
        shard reader's cache and counters), so a router can run several at once. `drop_last`: None takes the
        dataset's. `ring`: in a DataLoader worker, the loader's shared batch slots, of which worker
        `ring_worker` takes its own.
        """
        rank, _ = self.rank_world
        _, _, in_worker = current_worker()
        files = planned_files(self.plan_epoch(epoch, worker, num_workers), self._read, self.error_log.filled,
                              self.shards.root)
        if self.shuffle:
            files = shuffle_files(files, self.file_buffer, int(epoch_rng(self.seed, epoch, rank, worker, 1).integers(2**62)))
        window_rng = epoch_rng(self.seed, epoch, rank, worker, 2) if self.shuffle else None
        drop_last = self.drop_last if drop_last is None else drop_last
        items = iterate_windows(files, self._window_spec(), self.shuffle_buffer, self.batch_size, drop_last,
                                window_rng, skip_windows=skip_windows, threads=1 if in_worker else self.batch_threads,
                                in_worker=in_worker, ring=ring, ring_worker=ring_worker, memory=self._chunk_memory())
        if not in_worker:  # in the training process: build batches in a thread, while the caller trains
            items = read_ahead(one_thread(items), depth=4)
        return hand_off(items, ring)

    def stream(self, ring: Optional[BatchRing] = None) -> Iterator[Dict[str, Any]]:
        """This process's part of the current epoch: `iter_epoch` for the worker it is (the role it plays when
        resuming), its items counted when they reach the training loop here (cursor.py)."""
        worker, num_workers, in_worker = current_worker()
        if in_worker and self.num_workers not in (0, num_workers):
            log.warning("dataset built with num_workers=%d but runs in %d workers; len() will be off",
                        self.num_workers, num_workers)
        epoch = self.cursor.epoch
        role, skip = self.cursor.role(worker, num_workers, epoch, self.worker_items)
        items = self.iter_epoch(epoch, role, num_workers, skip * (self.batch_size or 1), ring=ring,
                                ring_worker=worker)
        return self.cursor.track(items, epoch, counting=not in_worker)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self.stream()

    def _read(self, j: int, pieces: Pieces) -> Optional[List[FileRecord]]:
        """The planned files of selected shard j (None: skipped)."""
        positions = self.selection.files[self.selection.bounds[j] + pieces[:, 0]].tolist()
        return self.reader.read(self.selection.shards[j], positions)

    def _chunk_memory(self) -> ChunkMemory:
        """This process's chunk buffers (a forked worker starts its own rather than share the parent's pages)."""
        if self._memory[0] != os.getpid():
            self._memory = (os.getpid(), ChunkMemory())
        return self._memory[1]

    def _window_spec(self) -> WindowSpec:
        mean = std = None
        if self.normalize == "global":
            stats = self.shards.manifest["stats"]
            mean = torch.tensor(stats["mean"], dtype=torch.float32)
            std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(STD_FLOOR)
        return WindowSpec(
            window=self.window, hop_length=self.hop_length, n_mels=self.n_mels,
            spectrogram=bool(self.outputs["spectrogram"]), audio=bool(self.outputs["audio"]),
            masks=list(self.outputs["masks"] or []), valid_mask=self.pad_short, meta=list(self.outputs["meta"] or []),
            label=self.label_key is not None, dtype=self.dtype, mean=mean, std=std,
            per_window_norm=self.normalize == "window", pad_value=math.log(self.features["log_eps"]),
        )

    # ------------------------------------------------------------ resume

    def shard_digest(self) -> str:
        """Identifies the shard selection (names and sha256): what a saved epoch position belongs to."""
        text = "\n".join(f"{s['name']} {s['sha256']}" for s in self.shards.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def windows_digest(self) -> str:
        """Identifies this subset's window counts per file (split, window rule and index all show in them)."""
        if self._windows_digest is None:
            self._windows_digest = hashlib.sha256(self.selection.counts.astype("<i8").tobytes()).hexdigest()[:16]
        return self._windows_digest

    def plan_inputs(self) -> Dict[str, Any]:
        """What this dataset's epoch plan depends on (a saved state must agree)."""
        return {"seed": self.seed, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "world_size": self.rank_world[1], "shards": self.shard_digest(), "window": [self.window, self.step],
                "windows": self.windows_digest()}

    def state_dict(self) -> Dict[str, Any]:
        """Where this rank is in the epoch, counted in items consumed, and what the epoch plan depends on."""
        return self.cursor.state_dict(self.plan_inputs())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after the first `state["consumed"]` items of this rank; the plan must
        be the one the state was saved under (seed, workers, batch size, world size, shards, windows). Every
        field is checked (states.py) before anything changes."""
        check_fields(state, DATASET_FIELDS, "dataset")
        plan = self.plan_inputs()
        self.cursor.load_state_dict(state, plan, tuple(plan), "dataset", lambda epoch: len(self))

    def summary(self) -> Summary:
        """Files, hours and windows of every subset of the split, the label balance of this one, and its files
        that yield no window and why (summary.py); print it to read it."""
        return summarize(self)

    def __repr__(self) -> str:
        return one_line(self)

    # ------------------------------------------------------------ errors and counters

    @property
    def errors(self) -> List[str]:
        """Messages of the shards skipped (on_error="warn") by this process and its DataLoader workers."""
        return self.error_log.messages()

    @property
    def skipped_shards(self) -> int:
        """Shards skipped (on_error="warn") by this process and its DataLoader workers, all epochs."""
        return self.error_log.totals()[0]

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

    # ------------------------------------------------------------ loader

    def loader(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
               pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
               **kwargs: Any) -> SpectrogramLoader:
        """A DataLoader for this dataset: batches built in the workers and handed over through shared slots,
        workers kept across epochs, pinned memory on CUDA, and state_dict()/load_state_dict() to resume."""
        return make_loader(self, batch_size, num_workers, pin_memory, persistent_workers, **kwargs)

    def ring_shape(self) -> Tuple[Tuple[int, ...], torch.dtype]:
        """(shape, dtype) of a batch's spectrogram: the slots the loader shares with its workers."""
        return (self.batch_size, self.n_mels, self.window), self.dtype


PARAMETER_DEFAULTS = {name: p.default for name, p in inspect.signature(SpectrogramDataset.__init__).parameters.items()
                      if p.default is not inspect.Parameter.empty}
