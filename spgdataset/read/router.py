"""SpectrogramDatasetRouter: several SpectrogramDatasets interleaved at fixed rates, in one label space.

Which dataset the n-th window comes from is decided by a schedule (schedule.py), not by random draws.
The router drives its datasets through their public surface only: `worker_windows` (what a worker gets),
`iter_epoch` (a worker's stream of an epoch, from any window on) and their label vocabularies.

- DDP: every dataset already gives each (rank, worker) slot the same window count on every rank
  (rules/elastic.py). The schedule deliberately leaves the rank out, so every rank computes the same
  schedule over the same counts, hence the same number of windows and batches: no rank runs out first
  and leaves the others waiting in an all-reduce. The ranks still see different data, because each
  dataset gives each rank its own windows.
- Workers: each DataLoader worker of a rank runs its own schedule over the windows each dataset gives
  that worker. The phase includes the worker, so workers are not in lockstep.

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
windows of the schedule, grouped by dataset, gathered straight from the datasets' chunks (chunks.take_parts).

Resume (`state_dict()` / `load_state_dict()`): the schedule is replayed to find how many windows each dataset
had delivered, and each dataset's stream starts there without building what is skipped; on the same layout the
resumed epoch is the uninterrupted one (restarted workers play rotated roles, cursor.py), on another each
dataset shares out its own rest (dataset_histories, rules/elastic.py).
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Dict, Generator, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ..rules.framelabels import merge_labelmaps
from ..rules.labels import merge_vocabularies
from ..rules.elastic import Stage
from .chunks import Chunk, ChunkTaker, Part, take_parts
from .compat import agreed, check_compatible, check_labels, check_windows, where
from .dataset import SpectrogramDataset
from .errorlog import SharedErrorLog
from .schedule import STOP_POLICIES, normalize_weights, rechunk, schedule, schedule_phases, skip_schedule, stop_limits
from .states import ROUTER_FIELDS
from .stream import EpochStream, Items
from .transport import PLAIN, Transport

log = logging.getLogger("spgdataset")
SHOWN = 4  # datasets named in repr()
Histories = Sequence[Sequence[Stage]]  # each dataset's finished stages of an epoch


class WorkerPlan(NamedTuple):
    """One worker's epoch: windows each dataset gives it, phases, per-dataset limits, total windows,
    and (for "resample") the most passes each dataset can need."""

    windows: List[int]
    phases: np.ndarray
    limits: List[Optional[int]]
    total: int
    passes: List[int]


class SpectrogramDatasetRouter(EpochStream):
    """Windows (or batches) of several SpectrogramDatasets, interleaved at fixed rates (see module docstring).

    Every item gets "dataset" (the index into `datasets`; a (B,) tensor in batches), "label" ids index
    `label_vocabulary`, the sorted union of the datasets' vocabularies, and "frame_labels" numbers are those of
    `labelmap`, the union of the datasets' labelmaps.

    Args:
        datasets: the SpectrogramDatasets to mix; they must agree on features, window, batch size and drop_last.
            None given: an empty router (len() 0), as the reference's default.
        weights: relative rates (default: proportional to each dataset's `num_windows()`).
        seed: the schedule's phases derive from (seed, epoch, worker).
        stop: "first_exhausted", "all_exhausted" or "resample" (module docstring).
        epoch_length: with stop="resample" only, and required there: windows per rank per epoch.
        merge_labels: datasets labelled by different metadata keys (say "speaker" and "gender") are refused,
            since their ids would index one vocabulary of unrelated values; True merges them on purpose.
    """

    kind = "router"
    state_fields = ROUTER_FIELDS

    def __init__(self, datasets: Sequence[SpectrogramDataset] = (), weights: Optional[Sequence[float]] = None,
                 seed: int = 0, stop: str = "first_exhausted", epoch_length: Optional[int] = None,
                 merge_labels: bool = False) -> None:
        """`SpectrogramDatasetRouter()` (the reference's default, no datasets) is an empty router: len() 0."""
        super().__init__()
        self.datasets = list(datasets)
        self.stop, self.epoch_length = stop, _checked_epoch_length(stop, epoch_length)
        check_compatible(self.datasets)
        check_labels(self.datasets, merge_labels)
        agreed(self.datasets, "batch_size")
        agreed(self.datasets, "drop_last")
        if weights is not None and len(weights) != len(self.datasets):
            raise ValueError(f"{len(weights)} weights for {len(self.datasets)} datasets")
        self.weights = normalize_weights(weights) if weights is not None and self.datasets else np.zeros(0)
        check_windows(self.datasets, None if weights is None else self.weights.tolist(), stop)
        if weights is None and self.datasets:
            self.weights = normalize_weights([ds.num_windows() for ds in self.datasets])
        self.seed = int(seed)
        self._dataset_histories: Dict[Tuple[int, Tuple[Stage, ...]], Histories] = {}
        self._num_workers = max([ds.num_workers for ds in self.datasets], default=0)
        self.label_vocabulary, maps = merge_vocabularies([ds.label_vocabulary for ds in self.datasets])
        self.label_maps = [torch.from_numpy(m) for m in maps]
        self.label_kept = [np.array_equal(m, np.arange(len(m))) for m in maps]  # ids already the merged ones
        frame_labels = bool(self.datasets) and self.datasets[0].config.outputs.frame_labels  # all or none (compat)
        lookups = merge_labelmaps([ds.labelmap for ds in self.datasets])[1] if frame_labels else []
        self.frame_label_maps: List[Optional[torch.Tensor]] = [  # None: the dataset's numbers are the merged ones
            None if np.array_equal(m, np.arange(len(m))) else torch.from_numpy(m) for m in lookups]

    @property
    def labelmap(self) -> Dict[str, int]:
        """What the frame labels' numbers mean: "background" 0, the union of the datasets' names sorted from 1;
        each dataset's frame labels are moved into it (`frame_label_maps[i]`, a lookup tensor or None)."""
        return merge_labelmaps([ds.labelmap for ds in self.datasets])[0]

    def __repr__(self) -> str:
        """One line, like repr(ds): the datasets with their windows and weights, the stop policy, and what an
        epoch of this rank yields."""
        shown = [f"{where(ds)!r} {ds.num_windows():,} windows at weight {w:.3g}"
                 for ds, w in zip(self.datasets[:SHOWN], self.weights.tolist())]
        more = f", and {len(self.datasets) - SHOWN} more" if len(self.datasets) > SHOWN else ""
        workers = max(self.num_workers, 1)
        windows = sum(self.worker_plan(w, workers, self.epoch).total for w in range(workers)) if self.datasets else 0
        batches = f", {len(self):,} batches of {self.batch_size}" if self.batch_size else ""
        return (f"SpectrogramDatasetRouter({len(self.datasets)} datasets: {', '.join(shown) or 'none'}{more}; "
                f"stop {self.stop!r}, {windows:,} windows per epoch{batches})")

    # ------------------------------------------------------------ settings shared with the datasets

    @property
    def batch_size(self) -> Optional[int]:
        """The datasets' batch size (they must agree): None yields single windows."""
        return agreed(self.datasets, "batch_size")

    @property
    def drop_last(self) -> bool:
        return bool(agreed(self.datasets, "drop_last"))

    @property
    def num_workers(self) -> int:
        """DataLoader workers, the same for the router and every dataset."""
        return self._num_workers

    @property
    def batch_threads(self) -> int:
        return max([ds.batch_threads for ds in self.datasets], default=1)

    def set_batching(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> None:
        """The given batch size and worker count, for the router and every dataset."""
        for ds in self.datasets:
            ds.set_batching(batch_size, num_workers)
        if num_workers is not None:
            self._num_workers = num_workers

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the router and of every dataset (reshuffles them and moves the phases)."""
        super().set_epoch(epoch)
        for ds in self.datasets:
            ds.set_epoch(epoch)

    # ------------------------------------------------------------ plan and sizes

    @property
    def world_size(self) -> int:
        return self.datasets[0].world_size if self.datasets else 1

    def worker_plan(self, worker: int, num_workers: int, epoch: int, histories: Optional[Histories] = None,
                    world: Optional[int] = None) -> WorkerPlan:
        """Worker `worker`'s schedule inputs, on `world` ranks (this job's when None) in the stage after each
        dataset's `histories` (none: the epoch's first stage)."""
        world = self.world_size if world is None else world
        histories = histories or [()] * len(self.datasets)
        windows = [ds.layout_windows(world, num_workers, epoch, h)[worker] for ds, h in zip(self.datasets, histories)]
        phases = schedule_phases(self.seed, epoch, worker, len(self.datasets))
        limits = stop_limits(windows, self.weights, phases, self.stop)
        if self.stop != "resample":
            return WorkerPlan(windows, phases, limits, sum(int(n or 0) for n in limits), [1] * len(self.datasets))
        length = self.epoch_length or 0
        share = length * (worker + 1) // num_workers - length * worker // num_workers
        return WorkerPlan(windows, phases, limits, int(share), self._passes_needed(num_workers))

    def layout_windows(self, world: int, num_workers: int, epoch: int, history: Sequence[Stage] = ()) -> List[int]:
        if not self.datasets:
            return [0] * max(num_workers, 1)
        histories = self.dataset_histories(epoch, history)
        return [self.worker_plan(w, num_workers, epoch, histories, world).total for w in range(max(num_workers, 1))]

    def dataset_histories(self, epoch: int, history: Sequence[Stage]) -> Histories:
        """Each dataset's finished stages from the router's: the schedule of each worker of a stage, replayed up to
        the windows it delivered, says how many each dataset gave it."""
        key = (epoch, tuple(history))
        if key not in self._dataset_histories:
            per: List[List[Stage]] = [[] for _ in self.datasets]
            for stage in history:
                before = [tuple(h) for h in per]
                taken = np.zeros((len(self.datasets), stage.workers), dtype=np.int64)
                for w in range(stage.workers):
                    plan = self.worker_plan(w, stage.workers, epoch, before, stage.world)
                    blocks = schedule(self.weights, plan.phases, plan.limits, plan.total)
                    taken[:, w] = skip_schedule(blocks, stage.taken[w], len(self.datasets))[0]
                for i, rows in enumerate(taken.tolist()):
                    per[i].append(Stage(stage.world, stage.workers, tuple(rows)))
            self._dataset_histories = {key: [tuple(h) for h in per]}
        return self._dataset_histories[key]

    def elastic_fields(self) -> Tuple[str, ...]:
        """With stop="resample" the datasets cycle passes per worker: its epochs resume on their own layout only."""
        return () if self.stop == "resample" else super().elastic_fields()

    def _passes_needed(self, num_workers: int) -> List[int]:
        """P_i: the most passes dataset i can need in one epoch of any worker (the same in every worker)."""
        passes, L, d = [1] * len(self.datasets), self.epoch_length or 0, len(self.datasets)
        for i, (ds, w) in enumerate(zip(self.datasets, self.weights)):
            if w == 0:
                continue
            for v in range(num_workers):
                n = ds.worker_windows(v, num_workers)
                if n == 0:
                    raise ValueError(f"dataset {i} ({where(ds)}) has no windows for DataLoader worker {v} "
                                     f"of {num_workers}: it cannot be resampled there")
                share = L * (v + 1) // num_workers - L * v // num_workers
                # a prefix of `share` windows holds fewer than (share + d) * w + 1 of dataset i
                passes[i] = max(passes[i], math.ceil(((share + d) * w + 1) / n))
        return passes

    # ------------------------------------------------------------ resume

    def plan_inputs(self) -> Dict[str, Any]:
        return {"seed": self.seed, "num_workers": self.num_workers, "batch_size": self.batch_size,
                "stop": self.stop, "epoch_length": self.epoch_length, "weights": self.weights.tolist(),
                "windows": [ds.num_windows() for ds in self.datasets],
                "world_size": self.datasets[0].rank_world[1] if self.datasets else 1,
                "shards": [ds.shard_digest() for ds in self.datasets],
                "plans": [ds.windows_digest() for ds in self.datasets]}

    # ------------------------------------------------------------ reading

    def iter_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1, skip_windows: int = 0,
                   drop_last: Optional[bool] = None, transport: Transport = PLAIN,
                   history: Sequence[Stage] = ()) -> Items:
        """Epoch `epoch` as worker `worker` of `num_workers` yields it in the stage after `history`, after its
        first `skip_windows` windows. `transport`: the mix's; the datasets' parts are built as it says, but read
        ahead only as a whole."""
        if not self.datasets:
            return
        histories = self.dataset_histories(epoch, history)
        plan = self.worker_plan(worker, num_workers, epoch, histories)
        taken, ids = skip_schedule(schedule(self.weights, plan.phases, plan.limits, plan.total), skip_windows,
                                   len(self.datasets))
        inner, size = transport.inner(), self.batch_size
        streams = [self._passes(i, plan, epoch, worker, num_workers, int(taken[i]), inner, histories[i], bool(size))
                   for i in range(len(self.datasets))]
        drop_last = self.drop_last if drop_last is None else drop_last
        items = self._batches(ids, streams, size, drop_last, transport) if size else self._windows(ids, streams)
        try:
            yield from items
        finally:
            for stream in streams:  # a dataset the epoch did not use up stops reading now
                stream.close()

    def _passes(self, i: int, plan: WorkerPlan, epoch: int, worker: int, num_workers: int, skip: int,
                transport: Transport, history: Sequence[Stage], chunks: bool) -> Generator[Any, None, None]:
        """Dataset i's items (its chunks, with `chunks`, when batches are gathered from them) in this worker from
        window `skip` of the schedule on: one pass, or pass after pass at dataset epochs epoch * P_i + p for
        "resample"."""
        epochs: Iterable[int] = [epoch]
        if self.stop == "resample" and plan.windows[i]:
            first, skip = divmod(skip, plan.windows[i])
            epochs = itertools.count(epoch * plan.passes[i] + first)
        for pass_epoch in epochs:
            ds = self.datasets[i]
            items: Any = ds.iter_chunks(pass_epoch, worker, num_workers, skip, transport, history) if chunks else \
                ds.iter_epoch(pass_epoch, worker, num_workers, skip, False, transport, history)
            skip, yielded = 0, False
            try:
                for item in items:
                    yielded = True
                    yield self._relabelled(item, i) if chunks else item
            finally:
                items.close()  # now, not at garbage collection: the dataset stops reading and its gatherers
            if not yielded:  # a pass with nothing in it (e.g. every shard skipped): do not loop forever
                return

    def _lookup(self, i: int, name: str) -> Optional[torch.Tensor]:
        """What moves dataset i's "label" or "frame_labels" numbers into the merged ones (None: they are already)."""
        if name == "label":
            return None if self.label_kept[i] else self.label_maps[i]
        return self.frame_label_maps[i]

    def _relabelled(self, chunk: Chunk, i: int) -> Chunk:
        """Dataset i's chunk with its labels in the merged vocabularies, moved once for all its batches."""
        lookup = self._lookup(i, "label") if chunk.spec.label else None
        if lookup is not None:
            chunk.relabel(lookup)
        lookup = self._lookup(i, "frame_labels") if chunk.frame_labels is not None else None
        if lookup is not None:
            chunk.relabel(lookup, frames=True)
        return chunk

    def _tag(self, item: Dict[str, Any], i: int) -> Dict[str, Any]:
        """Say which dataset a single window came from and move its labels into the merged vocabularies."""
        item = dict(item, dataset=i)
        for name in ("label", "frame_labels"):
            lookup = self._lookup(i, name) if name in item else None
            if lookup is not None:
                item[name] = lookup[item[name]]
        return item

    def _windows(self, ids: Iterator[np.ndarray],
                 streams: Sequence[Iterator[Dict[str, Any]]]) -> Iterator[Dict[str, Any]]:
        for block in ids:
            for i in block.tolist():
                item = next(streams[i], None)
                if item is None:
                    ran_out(self.datasets[i], i)
                    return
                yield self._tag(item, i)

    def _batches(self, ids: Iterator[np.ndarray], streams: Sequence[Iterator[Chunk]], size: int, drop_last: bool,
                 transport: Transport) -> Iterator[Dict[str, Any]]:
        """Each batch gathered straight from the datasets' chunks (chunks.take_parts), grouped by dataset."""
        takers = [ChunkTaker(s) for s in streams]
        full, fresh = transport.outputs(size)
        for block in rechunk(ids, size):
            if len(block) < size and drop_last:
                return
            counts = np.bincount(block, minlength=len(takers))
            parts: List[Part] = []
            owners: List[int] = []
            for i in np.flatnonzero(counts).tolist():
                got = takers[i].take(int(counts[i]))
                if sum(hi - lo for _, lo, hi in got) < counts[i]:
                    ran_out(self.datasets[i], i)
                    return
                parts += got
                owners += [i] * len(got)
            batch = take_parts(parts, full if len(block) == size else fresh)  # labels already merged (_relabelled)
            lengths = [hi - lo for _, lo, hi in parts]
            batch["dataset"] = torch.from_numpy(np.repeat(np.array(owners, dtype=np.int64), lengths))
            yield batch

    # ------------------------------------------------------------ errors

    def error_logs(self) -> List[SharedErrorLog]:
        return [error_log for ds in self.datasets for error_log in ds.error_logs()]


# ---------------------------------------------------------------- helpers


def _checked_epoch_length(stop: str, epoch_length: Optional[int]) -> Optional[int]:
    if stop not in STOP_POLICIES:
        raise ValueError(f"stop must be one of {STOP_POLICIES}, got {stop!r}")
    if stop == "resample":
        if epoch_length is None or int(epoch_length) <= 0:
            raise ValueError("stop='resample' never runs out, so it needs epoch_length (windows per rank "
                             f"per epoch, > 0), got {epoch_length!r}")
        return int(epoch_length)
    if epoch_length is not None:
        raise ValueError(f"epoch_length is only for stop='resample'; with stop={stop!r} the epoch ends "
                         "when the datasets run out")
    return None


def ran_out(ds: SpectrogramDataset, i: int) -> None:
    log.warning("dataset %d (%s) ran out before the schedule said it would (skipped shards?); the epoch ends "
                "early here, and under DDP this rank may now yield fewer batches than the others", i, where(ds))
