"""The epoch-stream protocol that SpectrogramDataset and SpectrogramDatasetRouter share, written once.

A stream has epochs; one worker's part of an epoch is `iter_epoch(epoch, worker, num_workers, skip_windows,
drop_last, transport)`, a pure function of its arguments that leaves out the first `skip_windows` windows (the
one skip unit: windows, also when items are batches). What depends on where it runs is added here by
`stream()`: which DataLoader worker this is and which role it plays after a restart (cursor.py), how its items
travel (transport.py), and the count of items consumed. Position (`state_dict` / `load_state_dict`), the
epoch, `len()` and `loader()` are the same for both; the loader (loader.py) is typed against this class.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, Callable, Dict, Generator, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.utils.data import IterableDataset

from ..rules.elastic import Stage, taken_windows
from ..rules.plan import batches, resume_point
from .cursor import EpochCursor, StageRow, current_worker
from .errorlog import SharedErrorLog
from .loader import SpectrogramLoader, make_loader
from .ring import BatchRing
from .states import Check, check_fields
from .transport import PLAIN, Transport

log = logging.getLogger("spgdataset")
Items = Generator[Dict[str, Any], None, None]  # what iter_epoch gives: closing it stops its reading at once
READ_AHEAD = 4  # items built ahead of the training loop in the training process


class EpochStream(IterableDataset):
    """An IterableDataset of epochs, resumable mid-epoch, with or without DataLoader workers.

    A subclass says what it is (`kind`, `state_fields`) and provides the abstract methods below (IterableDataset's
    metaclass is ABCMeta: a subclass missing one cannot be made), and `ring_shape` when it has batch slots.
    """

    kind = "stream"  # named in messages: "dataset" or "router"
    state_fields: Mapping[str, Check] = {}  # what a saved state must hold (states.py)

    def __init__(self) -> None:
        super().__init__()
        self.cursor = EpochCursor()  # epoch and resume point, seen by persistent workers
        self._histories: Dict[Tuple[int, Tuple[StageRow, ...]], Tuple[Stage, ...]] = {}

    # ------------------------------------------------------------ what a stream provides

    @property
    @abc.abstractmethod
    def batch_size(self) -> Optional[int]:
        """Windows per item (None: single windows)."""

    @property
    @abc.abstractmethod
    def num_workers(self) -> int:
        """The DataLoader workers `len()` assumes and `loader()` starts."""

    @property
    def batch_threads(self) -> int:
        return 1

    @abc.abstractmethod
    def set_batching(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None) -> None:
        """Change the batch size and DataLoader worker count (the given ones): what `loader()` asks for."""

    @property
    @abc.abstractmethod
    def drop_last(self) -> bool:
        """A worker's last windows that do not fill a batch are left out."""

    @property
    @abc.abstractmethod
    def world_size(self) -> int:
        """Ranks of the DDP job this stream is part of (1 without DDP)."""

    @abc.abstractmethod
    def iter_epoch(self, epoch: int, worker: int = 0, num_workers: int = 1, skip_windows: int = 0,
                   drop_last: Optional[bool] = None, transport: Transport = PLAIN,
                   history: Sequence[Stage] = ()) -> Items:
        """Worker `worker`'s part of epoch `epoch` after its first `skip_windows` windows, in the stage of the epoch
        after `history` (rules/elastic.py), carried as `transport` says; it reads and changes none of the stream's
        epoch or resume state."""

    @abc.abstractmethod
    def layout_windows(self, world: int, num_workers: int, epoch: int, history: Sequence[Stage] = ()) -> List[int]:
        """Windows each of `num_workers` workers of a rank of `world` yields in the stage of `epoch` after
        `history` (the same on every rank)."""

    @abc.abstractmethod
    def plan_inputs(self) -> Dict[str, Any]:
        """What the epoch's order depends on: a saved state must agree."""

    @abc.abstractmethod
    def error_logs(self) -> List[SharedErrorLog]:
        """The shared logs of shards skipped (on_error="warn"), of this stream's datasets."""

    def ring_shape(self) -> Optional[Tuple[Tuple[int, ...], torch.dtype]]:
        """(shape, dtype) of a batch's spectrogram, which the loader's workers gather into shared slots; None:
        no slots."""
        return None

    # ------------------------------------------------------------ written once

    @property
    def epoch(self) -> int:
        return self.cursor.epoch

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: an epoch's order derives from (seed, epoch) (rules/order.py)."""
        self.cursor.set_epoch(epoch)

    def worker_items(self, num_workers: int, epoch: Optional[int] = None) -> List[int]:
        """Items (batches, or windows without batch_size) each of `num_workers` workers yields in `epoch` (the
        current one when None), in its stage being resumed if it is."""
        epoch = self.epoch if epoch is None else epoch
        return self._items(self.layout_windows(self.world_size, num_workers, epoch, self.history(epoch)))

    def _items(self, windows: Sequence[int]) -> List[int]:
        return [batches(n, self.batch_size or 1, self.drop_last) for n in windows]

    def history(self, epoch: int, rows: Optional[Sequence[StageRow]] = None) -> Tuple[Stage, ...]:
        """The finished stages of `epoch` (those of the cursor, or `rows`) in windows each worker delivered."""
        rows = self.cursor.stages_of(epoch) if rows is None else rows
        key = (epoch, tuple(rows))
        if key not in self._histories:
            stages: List[Stage] = []
            for world, workers, consumed in rows:
                windows = self.layout_windows(world, workers, epoch, tuple(stages))
                items = self._items(windows)
                if consumed > sum(items):
                    raise ValueError(f"{self.kind} state: stages: a stage on {world} rank(s) x {workers} worker(s) "
                                     f"consumed {consumed} items of its {sum(items)}")
                taken = resume_point(consumed, items)[0]
                stages.append(Stage(world, workers, taken_windows(taken, windows, self.batch_size or 1)))
            self._histories = {key: tuple(stages)}
        return self._histories[key]

    def _stage_items(self, epoch: int, rows: List[StageRow], world: int, num_workers: int) -> int:
        """A rank's items in the stage of `epoch` after `rows` on `world` x `num_workers` (load_state_dict)."""
        return sum(self._items(self.layout_windows(world, num_workers, epoch, self.history(epoch, rows))))

    def __len__(self) -> int:
        """Items this rank yields this epoch (windows, or batches with batch_size), the same on every rank."""
        return sum(self.worker_items(max(self.num_workers, 1)))

    def transport(self, in_worker: bool, ring: Optional[BatchRing], worker: int) -> Transport:
        """How items travel from here: one thread into shared memory in a worker; in the training process
        `batch_threads` gatherers and READ_AHEAD items built ahead in a thread, while the caller trains."""
        if in_worker:
            return Transport(True, ring, worker, shards_ahead=True)
        return Transport(False, None, worker, self.batch_threads, READ_AHEAD, shards_ahead=True)

    def stream(self, ring: Optional[BatchRing] = None) -> Iterator[Dict[str, Any]]:
        """This process's part of the current epoch: `iter_epoch` for the worker it is (the role it plays when
        resuming), its items counted when they reach the training loop here (cursor.py)."""
        worker, num_workers, in_worker = current_worker()
        if in_worker and self.num_workers not in (0, num_workers):
            log.warning("%s built with num_workers=%d but runs in %d workers; len() will be off", self.kind,
                        self.num_workers, num_workers)
        epoch = self.cursor.epoch
        role, skip = self.cursor.role(worker, num_workers, epoch, lambda n: self.worker_items(n, epoch))
        transport = self.transport(in_worker, ring, worker)
        items = self.iter_epoch(epoch, role, num_workers, skip * (self.batch_size or 1), transport=transport,
                                history=self.history(epoch))
        items = _then(items, lambda: self.after_epoch(epoch, worker, num_workers))
        return self.cursor.track(transport.deliver(items), epoch, counting=not in_worker)

    def after_epoch(self, epoch: int, worker: int, num_workers: int) -> None:
        """Called once worker `worker` of `num_workers` has built the last item of `epoch` (not when the loop was
        left early), while those items still drain: a stream may prepare the next epoch here."""

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self.stream()

    def state_dict(self) -> Dict[str, Any]:
        """Where this rank is in the epoch, counted in items consumed, and what the epoch plan depends on."""
        return self.cursor.state_dict(self.plan_inputs())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue epoch `state["epoch"]` after the first `state["consumed"]` items of this rank; the plan must
        be the one the state was saved under, except for the layout (world size, workers: `elastic_fields`), which
        may change. Every field is checked (states.py) before anything changes."""
        check_fields(state, self.state_fields, self.kind)
        plan = self.plan_inputs()
        self.cursor.load_state_dict(state, plan, tuple(plan), self.kind, self._stage_items, self.elastic_fields())
        self.set_epoch(int(state["epoch"]))

    def elastic_fields(self) -> Tuple[str, ...]:
        """The plan's entries a resumed epoch may change: its layout (a stage of the epoch ends there)."""
        return ("world_size", "num_workers")

    @property
    def errors(self) -> List[str]:
        """Messages of the shards skipped (on_error="warn") in this process and its DataLoader workers."""
        return [message for error_log in self.error_logs() for message in error_log.messages()]

    @property
    def skipped_shards(self) -> int:
        """Shards skipped (on_error="warn") in this process and its DataLoader workers, all epochs."""
        return sum(error_log.totals()[0] for error_log in self.error_logs())

    def loader(self, batch_size: Optional[int] = None, num_workers: Optional[int] = None,
               pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
               **kwargs: Any) -> SpectrogramLoader:
        """A DataLoader over this stream: batches built in the workers (for a dataset, gathered into slots
        shared with the training process), workers kept across epochs, pinned memory on CUDA, and
        state_dict()/load_state_dict() to resume mid-epoch. The given batch size and worker count become this
        stream's (`set_batching`)."""
        return make_loader(self, batch_size, num_workers, pin_memory, persistent_workers, **kwargs)


def _then(items: Items, done: Callable[[], None]) -> Items:
    """`items`, then `done()` once they ran out (not when closed early)."""
    yield from items
    done()
