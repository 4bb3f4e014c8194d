"""SpectrogramDataset: stream spg-shard shards into sliding windows, as a PyTorch IterableDataset.

Pipeline per rank and DataLoader worker:
  epoch plan of shards (plan.py) -> read each shard whole and check its sha256 (a local file once per
  process while unchanged) -> walk the tar + webdataset's key grouping -> decode npy views + msgpack (never
  pickle) -> keep this split's files -> shuffle files (webdataset's shuffle buffer) -> windows, shuffled per chunk and batched with one gather (batching.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import random
from typing import (
    Any,
    Container,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys

from ..errors import ShardError
from ..format.codec import decode_flac, npy_view, unpack
from ..format.names import AUDIO, INFO, SPEC
from ..format.tar import tar_members
from ..rules.labels import label_ids, label_token
from ..rules.plan import (
    Piece,
    batches,
    epoch_rng,
    resume_point,
    shard_order,
    slot_pieces,
    slot_range,
)
from ..rules.splits import normalize_split, subset_of
from ..rules.windows import count_kept, kept_starts, window_frames
from ..storage.local import read_at_most
from .batching import FileRecord, WindowSpec, iterate_windows, one_thread
from .errorlog import SharedErrorLog
from .loader import SpectrogramLoader
from .memory import ChunkMemory, tensor_nbytes
from .prefetch import read_ahead
from .ring import BatchRing
from .source import ShardSet, Source, open_source

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
        verify: Any = True,
        batch_threads: int = 2,
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
        self._storage_dtype = np.dtype(features["storage_dtype"]).newbyteorder("<")
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
        self._label_ids = label_ids(vocab)
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
        if verify not in (True, False, "always"):
            raise ValueError(f"verify must be True, False or 'always', got {verify!r}")
        self.on_error, self.verify = on_error, verify
        self.batch_threads = max(1, int(batch_threads))
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by persistent workers
        self._ring: Optional[BatchRing] = None  # set by loader() when batches come from workers
        self._cache: Dict[str, FileRecord] = {}
        self._cache_bytes = 0
        self._memory = (os.getpid(), ChunkMemory())  # chunk buffers, reused across epochs in this process
        self._verified: Dict[str, Tuple[Any, ...]] = {}  # local shard -> file identity when its sha256 passed
        self.shard_opens = 0  # shards opened by this process (the memory cache test counts these)
        self.error_log = SharedErrorLog(max(num_workers, 64))  # skipped shards, seen from every worker
        self._consumed = torch.zeros(1, dtype=torch.int64)  # items yielded in this process this epoch
        self._resume = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()  # (epoch, items consumed)
        self._count_windows()

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

    def _count_windows(self) -> None:
        """Per shard, the subset's files (index rows) and their window counts: the plan's only input."""
        self._subset_rows: List[List[Dict[str, Any]]] = []
        self._file_windows: List[List[int]] = []
        for shard in self.shards.shards:
            rows = [r for r in self.shards.files_by_shard[shard["name"]] if self.in_subset(r["path"], r["metadata"])]
            self._subset_rows.append(rows)
        every = [r for rows in self._subset_rows for r in rows]
        counts = count_kept([r["frames"] for r in every], [r["intervals"] for r in every], self.window, self.step,
                            self.hop_length, self.content_intervals, self.window_content_ratio, self.pad_short).tolist()
        for rows in self._subset_rows:
            self._file_windows.append(counts[: len(rows)])
            counts = counts[len(rows):]
        self._windows_digest: Optional[str] = None

    def shard_digest(self) -> str:
        """Identifies the shard selection (names and sha256): what a saved epoch position belongs to."""
        text = "\n".join(f"{s['name']} {s['sha256']}" for s in self.shards.shards)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def windows_digest(self) -> str:
        """Identifies this subset's window counts per file (split, window rule and index all show in them)."""
        if self._windows_digest is None:
            counts = np.array([n for per_shard in self._file_windows for n in per_shard], dtype=np.int64)
            self._windows_digest = hashlib.sha256(counts.tobytes()).hexdigest()[:16]
        return self._windows_digest

    def windows(self) -> List[Tuple[str, int]]:
        """Every (key, start) of this subset, computed from the index alone (no shard is opened)."""
        return [(row["key"], int(s)) for rows in self._subset_rows for row in rows
                for s in self.file_windows(row["frames"], row["intervals"])]

    def num_windows(self) -> int:
        """Windows of this subset in one epoch (all ranks together, before the equal-share trim)."""
        return sum(sum(counts) for counts in self._file_windows)

    def _slot(self, worker: int, num_workers: int, epoch: int) -> Tuple[int, int]:
        rank, world = self.rank_world
        return slot_range(self.num_windows(), rank, world, worker, num_workers)

    def _plan(self, worker: int, num_workers: int, epoch: int) -> List[Tuple[int, List[Piece]]]:
        """This worker's shards and file window ranges for `epoch` (see plan.py).

        With a memory cache the assignment is the one of epoch 0 every epoch (only the reading order
        changes), so that each worker finds its files in its own cache.
        """
        fixed = self.max_memory_cache > 0
        order = shard_order(len(self.shards.shards), self.seed, 0 if fixed else epoch, self.shuffle)
        plan = slot_pieces(order, self._file_windows, *self._slot(worker, num_workers, epoch))
        if fixed and self.shuffle:
            rank, _ = self.rank_world
            plan = [plan[i] for i in epoch_rng(self.seed, epoch, rank, worker, 3).permutation(len(plan))]
        return plan

    def _worker_batches(self, num_workers: int) -> List[int]:
        sizes = [hi - lo for lo, hi in (self._slot(w, num_workers, self.epoch) for w in range(num_workers))]
        return [batches(n, self.batch_size or 1, self.drop_last) for n in sizes]

    def __len__(self) -> int:
        """Items this rank yields per epoch: windows, or with batch_size the batches of all its workers.

        Equal on every rank: each rank's share of the epoch's windows is the same size.
        """
        return sum(self._worker_batches(max(self.num_workers, 1)))

    # ------------------------------------------------------------ resume

    def state_dict(self) -> Dict[str, Any]:
        """Where this rank is in the epoch, counted in items consumed (valid when iterated in-process), and
        what the epoch plan depends on (checked by load_state_dict)."""
        return {"epoch": self.epoch, "consumed": int(self._consumed[0]), **self._plan_inputs()}

    def _plan_inputs(self) -> Dict[str, Any]:
        return {"seed": self.seed, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "world_size": self.rank_world[1], "shards": self.shard_digest(), "window": [self.window, self.step],
                "windows": self.windows_digest()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after the first `state["consumed"]` items of this rank.

        The plan must be the one the state was saved under: same seed, workers, batch size, world size,
        shards, window rule and subset (states saved before world_size/shards/window/windows were recorded
        are checked on what they hold)."""
        required = ("seed", "num_workers", "batch_size")
        for name, mine in self._plan_inputs().items():
            if (name in required or name in state) and state.get(name) != mine:
                raise ValueError(f"state was saved with {name}={state.get(name)!r}, this dataset has "
                                 f"{mine!r}: the epoch plan would differ")
        self.set_epoch(int(state["epoch"]))
        self._resume[0], self._resume[1] = int(state["epoch"]), int(state["consumed"])

    def _resume_role(self, worker: int, num_workers: int, epoch: int) -> Tuple[int, int]:
        """(logical worker, items it already delivered): (worker, 0) unless resuming this epoch."""
        if int(self._resume[0]) != epoch or int(self._resume[1]) <= 0:
            return worker, 0
        taken, first = resume_point(int(self._resume[1]), self._worker_batches(num_workers))
        logical = (worker + first) % num_workers
        return logical, taken[logical]

    # ------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.num_workers not in (0, info.num_workers):
            log.warning("dataset built with num_workers=%d but runs in %d workers; len() will be off",
                        self.num_workers, info.num_workers)
        rank, _ = self.rank_world
        epoch = self.epoch
        worker, skip = self._resume_role(worker, num_workers, epoch)
        self._consumed[0] = skip
        files = self._files(self._plan(worker, num_workers, epoch))
        if self.shuffle:
            rng = random.Random(int(epoch_rng(self.seed, epoch, rank, worker, 1).integers(2**62)))
            files = wds.filters._shuffle(files, bufsize=self.file_buffer, initial=self.file_buffer, rng=rng)
        window_rng = epoch_rng(self.seed, epoch, rank, worker, 2) if self.shuffle else None
        items = iterate_windows(files, self._window_spec(), self.shuffle_buffer, self.batch_size,
                                self.drop_last, window_rng, skip_windows=skip * (self.batch_size or 1),
                                threads=self.batch_threads if info is None else 1, ring=self._ring,
                                memory=self._chunk_memory())
        if info is None:  # in the training process: build batches in a thread, while the caller trains
            items = read_ahead(one_thread(items), depth=4)
        for item in items:
            if info is not None and self._ring is not None:
                item = self._ring.pack(item)
            if info is None:
                self._consumed[0] += 1
            yield item
        if info is None:
            self._resume[0] = -1

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
            std = torch.tensor(stats["std"], dtype=torch.float32).clamp_min(1e-5)
        return WindowSpec(
            window=self.window, hop_length=self.hop_length, n_mels=self.n_mels,
            spectrogram=bool(self.outputs["spectrogram"]), audio=bool(self.outputs["audio"]),
            masks=list(self.outputs["masks"] or []), valid_mask=self.pad_short, meta=list(self.outputs["meta"] or []),
            label=self.label_key is not None, dtype=self.dtype, mean=mean, std=std,
            per_window_norm=self.normalize == "window", pad_value=math.log(self.features["log_eps"]),
        )

    def _files(self, plan: List[Tuple[int, List[Piece]]]) -> Iterator[FileRecord]:
        """The planned files, each restricted to its planned window range; shards are read one ahead.

        A shard skipped in warn mode leaves its windows out; they are made up at the end (`_fill_in`), so that
        this worker still yields its planned count and every rank len() items (a rank that yields fewer
        batches hangs the others in their next all-reduce).
        """
        lost, read = 0, []
        for (k, pieces), records in read_ahead(((k, pieces), self._records_of(k, pieces)) for k, pieces in plan):
            if records is None:
                lost += sum(b - a for _, a, b in pieces)
                continue
            read.append((k, pieces))
            yield from self._restricted(records, k, pieces)
        if lost:
            yield from self._fill_in(read, lost)

    def _fill_in(self, read: List[Tuple[int, List[Piece]]], lost: int) -> Iterator[FileRecord]:
        """`lost` windows repeated from this worker's shards that were read, in plan order, as often as needed."""
        while lost > 0:
            if not read:
                raise ShardError(f"{self.shards.root}: every shard of this worker's share was skipped; {lost} "
                                 "windows cannot be made up from other files, so this rank would yield fewer "
                                 "batches than len()")
            for k, pieces in list(read):
                records = self._records_of(k, pieces)
                if records is None:  # it failed this time
                    read.remove((k, pieces))
                    continue
                for record in self._restricted(records, k, pieces):
                    take = min(lost, len(record.starts))
                    self.error_log.filled(take)
                    yield dataclasses.replace(record, starts=record.starts[:take])
                    lost -= take
                    if not lost:
                        return

    def _restricted(self, records: List[FileRecord], k: int, pieces: List[Piece]) -> Iterator[FileRecord]:
        rows = self._subset_rows[k]
        wanted = {rows[i]["key"]: (a, b) for i, a, b in pieces}
        for record in records:
            a, b = wanted[record.key]
            yield dataclasses.replace(record, starts=record.starts[a:b])

    def _records_of(self, k: int, pieces: List[Piece]) -> Optional[List[FileRecord]]:
        """The planned files of shard k: from the memory cache when it has them all, else read (None: skipped)."""
        rows = self._subset_rows[k]
        wanted = [rows[i]["key"] for i, _, _ in pieces]
        cached = [self._cache.get(key) for key in wanted]
        if all(c is not None for c in cached):
            return cached
        return self._read_shard(self.shards.shards[k], set(wanted))

    def _read_shard(self, shard: Dict[str, Any], wanted: Container[str]) -> Optional[List[FileRecord]]:
        """The wanted files of one shard, returned only once the whole shard has been checked; None when it
        was skipped (on_error="warn").

        Holding a shard's files until its end (at most one shard, `--max-shard-mb`) is what lets a
        corrupt shard be skipped whole in warn mode and keeps unchecked files out of the memory cache.
        The shard must hold exactly the files index.msgpack lists for it, each as the index describes it:
        the plan (len(), every rank's share) was computed from the index.
        """
        url = self.shards.url(shard)
        rows = {row["key"]: row for row in self.shards.files_by_shard[shard["name"]]}
        records: List[FileRecord] = []
        seen: Set[str] = set()
        try:
            data = self._shard_bytes(url, shard)
            for sample in group_by_keys(tar_members(data, url)):
                key = sample.get("__key__")
                if key not in rows or key in seen:
                    raise ShardError(f"{url}: holds {key!r}, which index.msgpack does not list for it (or twice)")
                seen.add(key)
                if key in wanted:
                    records.append(self._decode(url, sample, rows[key]))
            if len(seen) != len(rows):
                raise ShardError(f"{url}: holds {len(seen)} files, index.msgpack lists {len(rows)} "
                                 "(truncated or replaced shard)")
        except Exception as exc:
            error = exc if isinstance(exc, ShardError) else ShardError(
                f"{url}: truncated or corrupt shard after {len(seen)} files: {_first_line(exc)}")
            if self.on_error == "raise":
                raise error from None
            self.error_log.skipped(str(error))
            log.warning("skipping: %s", error)
            return None
        for record in records:
            self._remember(record)
        return records

    def _shard_bytes(self, url: str, shard: Dict[str, Any]) -> bytes:
        """The whole shard in one read, checked against the manifest's size and (see `verify`) sha256."""
        stream = self.shards.open_shard(shard)
        try:
            data = read_at_most(stream, shard["bytes"])
            identity = _file_identity(stream, len(data), shard["sha256"])
        finally:
            stream.close()
        self.shard_opens += 1
        if len(data) != shard["bytes"]:
            size = f"more than {shard['bytes']}" if len(data) > shard["bytes"] else str(len(data))
            raise ShardError(f"{url}: {size} bytes, the manifest says {shard['bytes']} (truncated, appended to "
                             "or replaced)")
        if self.verify and (self.verify == "always" or identity is None or self._verified.get(url) != identity):
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard["sha256"]:
                raise ShardError(f"{url}: sha256 {digest[:12]}... disagrees with the manifest's "
                                 f"{shard['sha256'][:12]}... ({len(data)} bytes: corrupt or replaced)")
            if identity is not None:
                self._verified[url] = identity
        return data

    def _remember(self, record: FileRecord) -> None:
        """Keep a checked file for later epochs while the cache has room (first come, first kept)."""
        if self.max_memory_cache and record.key not in self._cache and \
                self._cache_bytes + record.nbytes <= self.max_memory_cache:
            # own copies: a view would keep the whole shard buffer alive for one file
            self._cache[record.key] = dataclasses.replace(
                record, spec=record.spec.copy(), audio=None if record.audio is None else record.audio.copy())
            self._cache_bytes += record.nbytes

    def _decode(self, url: str, sample: Dict[str, Any], row: Dict[str, Any]) -> FileRecord:
        """One file of a shard, checked against its index row and the manifest's features."""
        key = sample.get("__key__")
        if INFO not in sample or SPEC not in sample:
            raise ShardError(f"{url}: sample {key!r} lacks {INFO if INFO not in sample else SPEC}")
        info = unpack(sample[INFO])
        if not isinstance(info, dict) or info.get("params") != self.shards.manifest["params"]:
            raise ShardError(f"{url}: sample {key!r} was written with other feature parameters than the manifest's")
        for field in ("path", "frames", "samples", "intervals"):
            if info.get(field) != row[field]:
                raise ShardError(f"{url}: sample {key!r}: {field} {_short(info.get(field))} disagrees with "
                                 f"index.msgpack's {_short(row[field])}")
        spec = npy_view(sample[SPEC])
        if spec.dtype != self._storage_dtype or spec.shape != (self.n_mels, row["frames"]) or \
                not spec.flags.c_contiguous:
            raise ShardError(f"{url}: sample {key!r} spectrogram is {spec.dtype.str} {spec.shape}, expected C-ordered "
                             f"{self._storage_dtype.str} ({self.n_mels}, {row['frames']})")
        audio = None
        if self.outputs["audio"]:
            if AUDIO not in sample:
                raise ShardError(f"{url}: sample {key!r} has no audio member")
            audio = decode_flac(sample[AUDIO])
            if audio.ndim != 1 or len(audio) != row["samples"]:
                raise ShardError(f"{url}: sample {key!r} audio has shape {audio.shape}, expected ({row['samples']},)")
        metadata = row["metadata"]
        label = self._label_ids.get(label_token(metadata[self.label_key]), -1) \
            if self.label_key is not None and self.label_key in metadata else -1
        return FileRecord(key, row["path"], spec, row["intervals"], info.get("metadata", metadata),
                          self.file_windows(row["frames"], row["intervals"]), label, audio)

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

    # ------------------------------------------------------------ loader

    def loader(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
               pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
               **kwargs: Any) -> SpectrogramLoader:
        """A DataLoader for this dataset: batches built in the workers, workers kept across epochs, pinned
        memory on CUDA, and state_dict()/load_state_dict() to resume mid-epoch."""
        if batch_size is not None:
            self.batch_size = batch_size
        if self.batch_size is None:
            raise ValueError("loader() needs a batch_size (here or in the constructor)")
        if num_workers is not None:
            self.num_workers = num_workers
        workers = self.num_workers
        self._ring = None
        if workers > 0:
            nbytes = tensor_nbytes((self.batch_size, self.n_mels, self.window), self.dtype)
            prefetch = kwargs.get("prefetch_factor", 4)
            # enough slots for the prefetched batches and a few held ones, within 512 MiB of shared memory
            slots = max(2 * workers, min(workers * (prefetch + 4), (512 << 20) // nbytes))
            self._ring = BatchRing(slots, nbytes, workers)
        return SpectrogramLoader(self, workers, pin_memory, persistent_workers, ring=self._ring, **kwargs)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _file_identity(stream: Any, size: int, sha256: str) -> Optional[Tuple[Any, ...]]:
    """(device, inode, size, mtime, expected sha256) of a local shard just read whole, else None.

    A shard whose sha256 passed is not hashed again while this identity holds: rewriting, replacing or
    truncating the file changes its inode, size or mtime. Remote streams have no identity: always hashed.
    """
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    if st.st_size != size:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
