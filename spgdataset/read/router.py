"""SpectrogramDatasetRouter: several SpectrogramDatasets interleaved at fixed rates, in one label space.

Which dataset the n-th window comes from is decided by a schedule, not by random draws. Stride
scheduling: with weights w_i normalised to sum 1 and a phase p_i in [0, 1), dataset i's k-th window gets
the virtual time (k + p_i) / w_i, and windows are served in the order of (time, i). Why:

- Rates are exact up to rounding. Any prefix of n windows holds n * w_i windows of dataset i give or
  take less than 1 + d * w_i (d datasets): a window or two. Random draws would be off by about
  sqrt(n * w_i), and what a batch holds would be a lottery.
- The sequence is a pure function of (seed, epoch, worker, weights, the datasets' window counts): the
  phases come from `plan.epoch_rng(seed, epoch, worker, ...)`. So `len()` is computed ahead, a resumed
  epoch replays the schedule to find where it was, and the same seed and epoch give the same sequence.
- DDP: every dataset already gives each (rank, worker) slot the same window count on every rank
  (plan.slot_range). The schedule deliberately leaves the rank out, so every rank computes the same
  schedule over the same counts, hence the same number of windows and batches: no rank runs out first
  and leaves the others waiting in an all-reduce. (A rank-dependent phase would move the
  "first_exhausted" stop point by a window on some ranks.) The ranks still see different data, because
  each dataset gives each rank its own windows.
- Workers: each DataLoader worker of a rank runs its own schedule over the windows each dataset gives
  that worker (the datasets split by worker themselves, through get_worker_info). The phase includes the
  worker, so workers are not in lockstep.

Stop policies (`stop=`), per worker, in windows:
- "first_exhausted": the epoch ends just before the first window that some dataset no longer has. Rates
  hold to the end; the other datasets leave part of their windows unseen this epoch (with the default
  weights, proportional to the window counts, that is at most a few windows each).
- "all_exhausted": a dataset that runs out drops out and the others go on until all are out: every window
  of every dataset once. The rates then change: after the first dataset runs out, the rest share its
  part in proportion to their weights.
- "resample": never runs out. A dataset that runs out starts its next pass, a reshuffle at its next
  epoch number; the epoch is `epoch_length` windows per rank (split over the workers like a dataset's
  windows). Pass p of dataset i in router epoch e runs at dataset epoch e * P_i + p, where P_i is the
  most passes dataset i can need in one router epoch, so no pass repeats another one's order.

With `batch_size` (the datasets' batch size, which must agree), each batch holds the next batch_size
windows of the schedule: the mix is inside every batch, not across batches. A batch is the
concatenation of slices of the datasets' own batches, grouped by dataset.

Resume (`state_dict()` / `load_state_dict()`): the schedule is replayed to find how many windows each
dataset had delivered. In one process (num_workers=0) the resumed epoch yields exactly what the
uninterrupted one would have; the datasets skip whole batches without building them. With DataLoader
workers, each worker skips the items it had delivered (counted as the DataLoader takes them in turn), so
the rest of the epoch is delivered exactly once, but the DataLoader starts its turns at worker 0 again, so
the order in which the workers' items interleave may differ from the uninterrupted run; the skipped
windows are read and dropped, not skipped unread (the datasets cannot be told which worker to play).
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import (
    Any,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..rules.labels import label_token
from ..rules.plan import batches, epoch_rng, resume_point
from .dataset import SpectrogramDataset
from .errorlog import SharedErrorLog
from .loader import SpectrogramLoader

log = logging.getLogger("spgdataset")

STOP_POLICIES = ("first_exhausted", "all_exhausted", "resample")
SCHEDULE_BLOCK = 8192  # virtual time per generated block of the schedule: about this many windows
_PHASE_STREAM = 101  # keeps the router's random stream apart from the datasets' (seed, epoch, rank, worker, k)


# ---------------------------------------------------------------- the schedule (pure functions)


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights as rates that sum to 1; zero leaves a dataset out."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    return w / w.sum()


def schedule_phases(seed: int, epoch: int, worker: int, num_datasets: int) -> np.ndarray:
    """Phases in [0, 1): from (seed, epoch, worker), the same on every rank (see the module docstring)."""
    return epoch_rng(seed, epoch, worker, _PHASE_STREAM).random(num_datasets)


def window_time(k: int, phase: float, weight: float) -> float:
    """Virtual time of a dataset's k-th window (0-based)."""
    return (k + phase) / weight


def count_before(t: float, phase: float, weight: float, inclusive: bool = False) -> int:
    """How many of a dataset's windows have a virtual time < t (<= t with `inclusive`).

    The closed form is checked against `window_time` itself, so the count agrees exactly with the float
    comparisons that order the schedule.
    """
    if weight <= 0:
        return 0

    def before(k: int) -> bool:
        x = window_time(k, phase, weight)
        return x <= t if inclusive else x < t

    c = max(int(math.ceil(t * weight - phase)), 0)
    while c > 0 and not before(c - 1):
        c -= 1
    while before(c):
        c += 1
    return c


def stop_limits(windows: Sequence[int], weights: np.ndarray, phases: np.ndarray,
                stop: str) -> List[Optional[int]]:
    """Windows each dataset contributes to one worker's epoch (None: unlimited, for "resample")."""
    if stop == "resample":
        return [None if w > 0 else 0 for w in weights]
    if stop == "all_exhausted":
        return [int(n) if w > 0 else 0 for n, w in zip(windows, weights)]
    if stop != "first_exhausted":
        raise ValueError(f"stop must be one of {STOP_POLICIES}, got {stop!r}")
    active = [i for i, w in enumerate(weights) if w > 0]
    # the first window (in schedule order) that does not exist: dataset i's windows[i]-th
    t_stop, i_stop = min((window_time(windows[i], phases[i], weights[i]), i) for i in active)
    return [min(count_before(t_stop, phases[j], weights[j], inclusive=j < i_stop), int(windows[j]))
            if weights[j] > 0 else 0 for j in range(len(weights))]


def schedule(weights: np.ndarray, phases: np.ndarray, limits: Sequence[Optional[int]],
             total: Optional[int] = None, block: int = SCHEDULE_BLOCK) -> Iterator[np.ndarray]:
    """Dataset index of each window of the epoch, in order, as consecutive int64 blocks.

    Dataset i contributes its windows 0..limits[i]-1 (all of them when None), in the order of
    (window_time, i); the whole sequence stops after `total` windows when given.
    """
    d = len(weights)
    done = [0] * d
    active = [i for i in range(d) if weights[i] > 0 and (limits[i] is None or limits[i] > 0)]
    emitted, t = 0, 0.0
    while active and (total is None or emitted < total):
        upcoming = min(window_time(done[i], phases[i], weights[i]) for i in active)
        t = max(t, float(math.floor(upcoming)))  # jump over stretches where no dataset has a window
        t_next = t + block
        ids, times = [], []
        for i in active:
            hi = count_before(t_next, phases[i], weights[i])
            if limits[i] is not None:
                hi = min(hi, limits[i])
            k = np.arange(done[i], hi, dtype=np.float64)
            times.append((k + phases[i]) / weights[i])
            ids.append(np.full(len(k), i, dtype=np.int64))
            done[i] = hi
        all_ids, all_times = np.concatenate(ids), np.concatenate(times)
        out = all_ids[np.lexsort((all_ids, all_times))]
        if total is not None:
            out = out[: total - emitted]
        emitted += len(out)
        if len(out):
            yield out
        active = [i for i in active if limits[i] is None or done[i] < limits[i]]
        t = t_next


def skip_schedule(blocks: Iterable[np.ndarray], n: int, num_datasets: int) -> Tuple[np.ndarray, Iterator[np.ndarray]]:
    """(windows of each dataset among the first n of the schedule, the rest of the schedule)."""
    counts = np.zeros(num_datasets, dtype=np.int64)
    blocks = iter(blocks)
    for block in blocks:
        if n < len(block):
            counts += np.bincount(block[:n], minlength=num_datasets)
            return counts, itertools.chain([block[n:]], blocks)
        counts += np.bincount(block, minlength=num_datasets)
        n -= len(block)
    return counts, iter(())


def rechunk(blocks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The schedule in pieces of exactly `size` windows (the last may be shorter): one per batch."""
    pending = np.zeros(0, dtype=np.int64)
    for block in blocks:
        pending = np.concatenate([pending, block]) if len(pending) else block
        full = len(pending) // size * size
        for lo in range(0, full, size):
            yield pending[lo : lo + size]
        pending = pending[full:]
    if len(pending):
        yield pending


def merge_vocabularies(vocabularies: Sequence[Sequence[Any]]) -> Tuple[List[Any], List[torch.Tensor]]:
    """One sorted vocabulary over all datasets, and per dataset a lookup tensor from its ids to the merged ids.

    Labels are the same label by the label rule of labels.py (1 and 1.0 are one label; 1, True and "1"
    are three). Each lookup ends with an extra -1, so indexing it with -1 (a file without the label)
    gives -1.
    """
    tokens: Dict[Tuple[Any, ...], Any] = {}
    for vocab in vocabularies:
        for value in vocab:
            tokens.setdefault(label_token(value), value)
    order = sorted(tokens)
    merged_id = {token: i for i, token in enumerate(order)}
    maps = [torch.tensor([merged_id[label_token(v)] for v in vocab] + [-1], dtype=torch.int64)
            for vocab in vocabularies]
    return [tokens[t] for t in order], maps


# ---------------------------------------------------------------- the router


class WorkerPlan(NamedTuple):
    """One worker's epoch: windows each dataset gives it, phases, per-dataset limits, total windows,
    and (for "resample") the most passes each dataset can need."""

    windows: List[int]
    phases: np.ndarray
    limits: List[Optional[int]]
    total: int
    passes: List[int]


class SpectrogramDatasetRouter(IterableDataset):
    """Windows (or batches) of several SpectrogramDatasets, interleaved at fixed rates (see module docstring).

    `weights`: relative rates, default proportional to each dataset's `num_windows()`. `stop`:
    "first_exhausted", "all_exhausted" or "resample" (needs `epoch_length`, windows per rank per epoch).
    Every item gets "dataset" (the index into `datasets`; a (B,) tensor in batches), and "label" ids index
    `label_vocabulary`, the sorted union of the datasets' vocabularies.
    """

    def __init__(self, datasets: Sequence[SpectrogramDataset], weights: Optional[Sequence[float]] = None,
                 seed: int = 0, stop: str = "first_exhausted", epoch_length: Optional[int] = None) -> None:
        super().__init__()
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("SpectrogramDatasetRouter needs at least one dataset")
        if stop not in STOP_POLICIES:
            raise ValueError(f"stop must be one of {STOP_POLICIES}, got {stop!r}")
        if stop == "resample":
            if epoch_length is None or int(epoch_length) <= 0:
                raise ValueError("stop='resample' never runs out, so it needs epoch_length (windows per rank "
                                 f"per epoch, > 0), got {epoch_length!r}")
            epoch_length = int(epoch_length)
        elif epoch_length is not None:
            raise ValueError(f"epoch_length is only for stop='resample'; with stop={stop!r} the epoch ends "
                             "when the datasets run out")
        _check_compatible(self.datasets)
        _agreed(self.datasets, "batch_size")
        _agreed(self.datasets, "drop_last")
        if weights is None:
            weights = [ds.num_windows() for ds in self.datasets]
            if sum(weights) == 0:
                raise ValueError("the datasets have no windows at all (weights default to the window counts)")
        elif len(weights) != len(self.datasets):
            raise ValueError(f"{len(weights)} weights for {len(self.datasets)} datasets")
        self.weights = normalize_weights(weights)
        if stop == "resample":
            for i, (ds, w) in enumerate(zip(self.datasets, self.weights)):
                if w > 0 and ds.num_windows() == 0:
                    raise ValueError(f"dataset {i} ({_where(ds)}) has no windows: it cannot be resampled "
                                     "(give it weight 0 or leave it out)")
        self.seed, self.stop, self.epoch_length = int(seed), stop, epoch_length
        self.num_workers = max(ds.num_workers for ds in self.datasets)
        self.label_vocabulary, self.label_maps = merge_vocabularies([ds.label_vocabulary for ds in self.datasets])
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # seen by persistent workers
        self._consumed = torch.zeros(1, dtype=torch.int64)  # items yielded in this process this epoch
        self._resume = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()  # (epoch, items consumed)

    # ------------------------------------------------------------ settings shared with the datasets

    @property
    def batch_size(self) -> Optional[int]:
        """The datasets' batch size (they must agree): None yields single windows."""
        return _agreed(self.datasets, "batch_size")

    @batch_size.setter
    def batch_size(self, value: Optional[int]) -> None:
        for ds in self.datasets:
            ds.batch_size = value

    @property
    def drop_last(self) -> bool:
        return bool(_agreed(self.datasets, "drop_last"))

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the router and of every dataset (reshuffles them and moves the phases)."""
        self._epoch[0] = int(epoch)
        for ds in self.datasets:
            ds.set_epoch(epoch)

    # ------------------------------------------------------------ plan and sizes

    def _plan(self, worker: int, num_workers: int, epoch: int) -> WorkerPlan:
        windows = [_worker_windows(ds, worker, num_workers) for ds in self.datasets]
        phases = schedule_phases(self.seed, epoch, worker, len(self.datasets))
        limits = stop_limits(windows, self.weights, phases, self.stop)
        passes = [1] * len(self.datasets)
        if self.stop == "resample":
            L = self.epoch_length
            total = L * (worker + 1) // num_workers - L * worker // num_workers
            for i, (ds, w) in enumerate(zip(self.datasets, self.weights)):
                if w == 0:
                    continue
                for v in range(num_workers):  # the same P_i in every worker
                    n = _worker_windows(ds, v, num_workers)
                    if n == 0:
                        raise ValueError(f"dataset {i} ({_where(ds)}) has no windows for DataLoader worker {v} "
                                         f"of {num_workers}: it cannot be resampled there")
                    share = L * (v + 1) // num_workers - L * v // num_workers
                    # a prefix of `share` windows holds fewer than (share + d) * w + 1 of dataset i
                    passes[i] = max(passes[i], math.ceil(((share + len(windows)) * w + 1) / n))
        else:
            total = sum(limits)
        return WorkerPlan(windows, phases, limits, int(total), passes)

    def _worker_items(self, num_workers: int, epoch: int) -> List[int]:
        size = self.batch_size or 1
        return [batches(self._plan(w, num_workers, epoch).total, size, self.drop_last) for w in range(num_workers)]

    def __len__(self) -> int:
        """Items this rank yields this epoch (windows, or batches with batch_size), for `num_workers` workers.

        The same on every rank. Under "first_exhausted" it can change between epochs by less than the
        number of datasets in windows (the phases move the stop point); the other policies do not change.
        """
        return sum(self._worker_items(max(self.num_workers, 1), self.epoch))

    # ------------------------------------------------------------ resume

    def state_dict(self) -> Dict[str, Any]:
        """Where this rank is in the epoch, in items consumed, plus what the schedule depends on."""
        return {"epoch": self.epoch, "consumed": int(self._consumed[0]), "seed": self.seed,
                "num_workers": self.num_workers, "batch_size": self.batch_size, "stop": self.stop,
                "epoch_length": self.epoch_length, "weights": self.weights.tolist(),
                "windows": [ds.num_windows() for ds in self.datasets],
                "world_size": self.datasets[0].rank_world[1],
                "shards": [ds.shard_digest() for ds in self.datasets],
                "plans": [ds.windows_digest() for ds in self.datasets]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after the first `state["consumed"]` items of this rank."""
        mine = self.state_dict()
        for name in ("seed", "num_workers", "batch_size", "stop", "epoch_length", "weights", "windows",
                     "world_size", "shards", "plans"):
            if (name in state or name not in ("world_size", "shards", "plans")) and state.get(name) != mine[name]:
                raise ValueError(f"state was saved with {name}={state.get(name)!r}, this router has "
                                 f"{mine[name]!r}: the schedule would differ")
        self.set_epoch(int(state["epoch"]))
        self._resume[0], self._resume[1] = int(state["epoch"]), int(state["consumed"])

    def _resume_items(self, worker: int, num_workers: int, epoch: int) -> int:
        """Items this worker had delivered before the saved position (0 unless resuming this epoch)."""
        if int(self._resume[0]) != epoch or int(self._resume[1]) <= 0:
            return 0
        taken, _ = resume_point(int(self._resume[1]), self._worker_items(num_workers, epoch))
        return taken[worker]

    # ------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None and self.num_workers not in (0, num_workers):
            log.warning("router built with num_workers=%d but runs in %d workers; len() will be off",
                        self.num_workers, num_workers)
        epoch = self.epoch
        plan = self._plan(worker, num_workers, epoch)
        size = self.batch_size or 1
        skip = self._resume_items(worker, num_workers, epoch)
        taken, ids = skip_schedule(schedule(self.weights, plan.phases, plan.limits, plan.total), skip * size,
                                   len(self.datasets))
        clones = [_private_copy(ds) for ds in self.datasets]
        streams = [self._passes(i, clones[i], plan, epoch, int(taken[i]), fast_skip=num_workers == 1)
                   for i in range(len(self.datasets))]
        self._consumed[0] = skip
        items = self._batches(ids, streams, size) if self.batch_size else self._windows(ids, streams)
        try:
            for item in items:
                if info is None:
                    self._consumed[0] += 1
                yield item
        finally:
            for stream in streams:  # a dataset the epoch did not use up stops reading now
                stream.close()
            for ds, clone in zip(self.datasets, clones):  # what the copies counted belongs to the dataset
                ds._cache_bytes, ds.shard_opens = clone._cache_bytes, clone.shard_opens
        if info is None:
            self._resume[0] = -1

    def _passes(self, i: int, clone: SpectrogramDataset, plan: WorkerPlan, epoch: int, skip: int,
                fast_skip: bool) -> Generator[Dict[str, Any], None, None]:
        """Dataset i's items in this worker from window `skip` of the schedule on: one pass, or pass after
        pass at dataset epochs epoch * P_i + p for "resample"."""
        if self.stop == "resample" and plan.windows[i]:
            first, skip = divmod(skip, plan.windows[i])
            epochs: Iterable[int] = itertools.count(epoch * plan.passes[i] + first)
        else:
            epochs = [epoch]
        return _dataset_items(clone, epochs, skip, fast_skip)

    def _tag(self, item: Dict[str, Any], i: int, batched: bool) -> Dict[str, Any]:
        """Say which dataset the windows came from and move their labels into the merged vocabulary."""
        item = dict(item)
        item["dataset"] = torch.full((_size(item),), i, dtype=torch.int64) if batched else i
        if "label" in item:
            item["label"] = self.label_maps[i][item["label"]]
        return item

    def _windows(self, ids: Iterator[np.ndarray], streams: List[Iterator[Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
        for block in ids:
            for i in block.tolist():
                item = next(streams[i], None)
                if item is None:
                    _ran_out(self.datasets[i], i)
                    return
                yield self._tag(item, i, batched=False)

    def _batches(self, ids: Iterator[np.ndarray], streams: List[Iterator[Dict[str, Any]]],
                 size: int) -> Iterator[Dict[str, Any]]:
        takers = [_Taker(s) for s in streams]
        drop_last = self.drop_last
        for chunk in rechunk(ids, size):
            if len(chunk) < size and drop_last:
                return
            counts = np.bincount(chunk, minlength=len(takers))
            parts = []
            for i in np.flatnonzero(counts).tolist():
                got = takers[i].take(int(counts[i]))
                if sum(_size(p) for p in got) < counts[i]:
                    _ran_out(self.datasets[i], i)
                    return
                parts.extend(self._tag(p, i, batched=True) for p in got)
            yield _concat(parts)

    @property
    def errors(self) -> List[str]:
        """Messages of the shards the datasets skipped (on_error="warn"), in this process and its workers."""
        return [message for ds in self.datasets for message in ds.errors]

    @property
    def skipped_shards(self) -> int:
        return sum(ds.skipped_shards for ds in self.datasets)

    def error_logs(self) -> List[SharedErrorLog]:
        return [log for ds in self.datasets for log in ds.error_logs()]

    # ------------------------------------------------------------ loader

    def loader(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
               pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
               **kwargs: Any) -> SpectrogramLoader:
        """A DataLoader over the router, as `SpectrogramDataset.loader`: batches are built (and mixed) in
        the workers, workers persist across epochs, and state_dict()/load_state_dict() resume mid-epoch.
        Sets batch_size and num_workers on the router and every dataset."""
        if batch_size is not None:
            self.batch_size = batch_size
        if self.batch_size is None:
            raise ValueError("loader() needs a batch_size (here or in the datasets)")
        if num_workers is not None:
            self.num_workers = num_workers
            for ds in self.datasets:
                ds.num_workers = num_workers
        return SpectrogramLoader(self, self.num_workers, pin_memory, persistent_workers,  # type: ignore[arg-type]
                                 **kwargs)


# ---------------------------------------------------------------- helpers


FEATURE_PARAMETERS = ("sample_rate", "hop_length", "n_mels", "n_fft", "f_min", "f_max")


def _where(ds: SpectrogramDataset) -> str:
    shards = getattr(ds, "shards", None)
    return str(getattr(shards, "root", "?"))


def _output_layout(ds: SpectrogramDataset) -> Dict[str, Any]:
    """The keys (and spectrogram dtype) of what a dataset yields: what must agree to mix windows in a batch."""
    out = ds.outputs
    masks = list(out["masks"] or []) + (["valid"] if ds.pad_short else [])
    layout = {"spectrogram": bool(out["spectrogram"]), "audio": bool(out["audio"]), "masks": sorted(masks),
              "meta": sorted(out["meta"] or []), "label": out["label"] is not None}
    if layout["spectrogram"]:
        layout["dtype"] = ds.dtype
    return layout


def _check_compatible(datasets: Sequence[SpectrogramDataset]) -> None:
    """Windows of all datasets must fit in one batch and mean the same thing: same features, window, keys."""
    first = datasets[0]

    def features(ds: SpectrogramDataset) -> Dict[str, Any]:
        f = dict(ds.features)
        f["f_max"] = f.get("f_max") or f["sample_rate"] / 2  # None means sample_rate / 2
        f["f_min"] = f.get("f_min") or 0.0
        return f

    ref = features(first)
    for i, ds in enumerate(datasets[1:], 1):
        feats = features(ds)
        for name in FEATURE_PARAMETERS:
            if feats[name] != ref[name]:
                raise ValueError(f"dataset {i} ({_where(ds)}) has {name}={feats[name]}, dataset 0 ({_where(first)}) "
                                 f"has {name}={ref[name]}: the router mixes their windows into one batch, so "
                                 "feature parameters must agree")
        for name, label in (("window", "window size (frames)"), ("step", "window step (frames)")):
            if getattr(ds, name) != getattr(first, name):
                raise ValueError(f"dataset {i} ({_where(ds)}) has {label} {name}={getattr(ds, name)}, dataset 0 "
                                 f"({_where(first)}) has {name}={getattr(first, name)}: window_size_sec and "
                                 "window_offset_sec must give the same frames")
        mine, theirs = _output_layout(ds), _output_layout(first)
        for key in theirs.keys() | mine.keys():
            if mine.get(key) != theirs.get(key):
                raise ValueError(f"dataset {i} ({_where(ds)}) yields {key}={mine.get(key)!r}, dataset 0 "
                                 f"({_where(first)}) yields {key}={theirs.get(key)!r}: output_configuration "
                                 "(and pad_short, dtype) must give the same keys")


def _agreed(datasets: Sequence[SpectrogramDataset], name: str) -> Any:
    values = [getattr(ds, name) for ds in datasets]
    for i, value in enumerate(values):
        if value != values[0]:
            raise ValueError(f"dataset {i} has {name}={value!r}, dataset 0 has {name}={values[0]!r}: the router "
                             f"mixes windows inside each batch, so {name} must agree")
    return values[0]


def _worker_windows(ds: SpectrogramDataset, worker: int, num_workers: int) -> int:
    """Windows `ds` yields in one DataLoader worker of this rank (the dataset's plan.slot_range share)."""
    lo, hi = ds._slot(worker, num_workers, ds.epoch)
    n = hi - lo
    if ds.batch_size and ds.drop_last:
        n = n // ds.batch_size * ds.batch_size
    return int(n)


def _private_copy(ds: SpectrogramDataset) -> SpectrogramDataset:
    """A shallow copy whose epoch and resume position are its own: a dataset's are shared-memory tensors
    (seen by its persistent workers), and a router worker sets them per pass without touching the user's."""
    clone = copy.copy(ds)
    clone._epoch = torch.zeros(1, dtype=torch.int64)
    clone._resume = torch.tensor([-1, 0], dtype=torch.int64)
    clone._consumed = torch.zeros(1, dtype=torch.int64)
    clone.num_workers = 0  # the router checks the worker count (and warns) itself
    return clone


def _dataset_items(clone: SpectrogramDataset, epochs: Iterable[int], skip: int,
                   fast_skip: bool) -> Generator[Dict[str, Any], None, None]:
    """Items of `clone` over passes at `epochs`, leaving out the first `skip` windows of the first pass.

    With `fast_skip` (one worker: the dataset's own resume maps onto it) whole batches are skipped inside
    the dataset without being built; the rest are read and dropped.
    """
    size = clone.batch_size or 1
    for epoch in epochs:
        fast = skip // size if fast_skip else 0
        skip -= fast * size
        clone._epoch[0] = epoch
        clone._resume[0], clone._resume[1] = (epoch if fast else -1), fast
        yielded = False
        items = iter(clone)
        try:
            for item in items:
                if skip:
                    n = _size(item) if clone.batch_size else 1
                    if skip >= n:
                        skip -= n
                        continue
                    item = _rows(item, skip, n)
                    skip = 0
                yielded = True
                yield item
        finally:
            items.close()  # now, not at garbage collection: the dataset stops its read-ahead thread
        if not yielded:  # a pass with nothing in it (e.g. every shard skipped): do not loop forever
            return


class _Taker:
    """Any number of windows at a time out of a stream of batches."""

    def __init__(self, items: Iterator[Dict[str, Any]]) -> None:
        self.items, self.batch, self.pos = items, None, 0

    def take(self, n: int) -> List[Dict[str, Any]]:
        """Slices totalling n windows (fewer only when the stream ends)."""
        parts = []
        while n > 0:
            if self.batch is None or self.pos >= _size(self.batch):
                self.batch, self.pos = next(self.items, None), 0
                if self.batch is None:
                    break
            m = min(n, _size(self.batch) - self.pos)
            parts.append(_rows(self.batch, self.pos, self.pos + m))
            self.pos += m
            n -= m
        return parts


def _size(batch: Dict[str, Any]) -> int:
    return len(batch["key"])


def _rows(batch: Dict[str, Any], lo: int, hi: int) -> Dict[str, Any]:
    """Windows lo..hi of a batch (views); the batch itself when that is all of it."""
    if lo == 0 and hi == _size(batch):
        return batch

    def cut(value: Any) -> Any:
        return {k: cut(v) for k, v in value.items()} if isinstance(value, dict) else value[lo:hi]

    return {name: cut(value) for name, value in batch.items()}


def _concat(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One batch out of parts with the same keys. Every tensor owns its memory, so a DataLoader worker
    sends only the batch, not the dataset batch it was cut from."""
    if len(parts) == 1:
        return _owned(parts[0])
    out: Dict[str, Any] = {}
    for name, value in parts[0].items():
        values = [p[name] for p in parts]
        if isinstance(value, torch.Tensor):
            out[name] = torch.cat(values)
        elif isinstance(value, dict):
            out[name] = _concat(values)
        else:
            out[name] = [x for v in values for x in v]
    return out


def _owned(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


def _ran_out(ds: SpectrogramDataset, i: int) -> None:
    log.warning("dataset %d (%s) ran out before the schedule said it would (skipped shards?); the epoch ends "
                "early here, and under DDP this rank may now yield fewer batches than the others", i, _where(ds))
