"""A DataLoader set up for a SpectrogramDataset or a router, with a resumable position in the epoch.

The loader owns the batch ring (ring.py) for its life: it makes the shared slots before the workers start,
hands them to its workers through `RingFeed`, and gives a slot back once the training loop holds no
reference to its batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Set, Tuple

import torch
from torch.utils.data import DataLoader, IterableDataset

from .memory import tensor_nbytes
from .ring import BatchRing

if TYPE_CHECKING:  # stream.py makes loaders: the type only, not a cycle at import time
    from .stream import EpochStream

log = logging.getLogger("spgdataset")
RING_BYTES = 512 << 20  # shared memory the ring may take


def as_is(batch: Any) -> Any:
    """The dataset already yields finished batches."""
    return batch


class RingFeed(IterableDataset):
    """What a DataLoader worker iterates: the dataset's stream, gathering batches into the ring's slots."""

    def __init__(self, dataset: "EpochStream", ring: BatchRing) -> None:
        super().__init__()
        self.dataset, self.ring = dataset, ring

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self.dataset.stream(self.ring)

    def __len__(self) -> int:
        return len(self.dataset)


def make_loader(source: "EpochStream", batch_size: Optional[int], num_workers: Optional[int],
                pin_memory: Optional[bool], persistent_workers: Optional[bool], **kwargs: Any) -> "SpectrogramLoader":
    """`loader()` of a dataset or a router: the stream takes the given batch size and worker count, then a
    SpectrogramLoader; with workers and a `ring_shape()` (the spectrogram batch), a batch ring sized for the
    prefetched batches and a few held ones, within RING_BYTES of shared memory."""
    if (batch_size if batch_size is not None else source.batch_size) is None:
        raise ValueError("loader() needs a batch_size (here or where the dataset was made)")
    source.set_batching(batch_size, num_workers)
    ring, slot = None, source.ring_shape()  # (shape, dtype) of a batch's spectrogram, or None
    if source.num_workers > 0 and slot is not None:
        nbytes = tensor_nbytes(*slot)
        prefetch = kwargs.get("prefetch_factor", 4)
        slots = max(2 * source.num_workers, min(source.num_workers * (prefetch + 4), RING_BYTES // nbytes))
        ring = BatchRing(slots, nbytes, source.num_workers)
    return SpectrogramLoader(source, source.num_workers, pin_memory, persistent_workers, ring=ring, **kwargs)


class SpectrogramLoader:
    """Iterates batches built in the dataset's workers and counts them, so a job can resume mid-epoch.

    `state_dict()` after n batches + `load_state_dict()` in a new process with the same dataset settings:
    the next iteration yields exactly the batches the uninterrupted run would have yielded after the n-th.
    The count is the dataset's cursor's: kept here when workers make the batches, by the dataset when it runs
    in this process.
    """

    def __init__(self, dataset: "EpochStream", num_workers: int, pin_memory: Optional[bool] = None,
                 persistent_workers: Optional[bool] = None, ring: Optional[BatchRing] = None,
                 **dataloader_kwargs: Any) -> None:
        """Defaults: pinned memory on CUDA; with workers, 4 batches prefetched each and workers kept across
        epochs. `ring`: the shared batch slots the workers gather into (ring.py)."""
        self.dataset, self.ring, self.num_workers = dataset, ring, num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        if num_workers > 0:
            dataloader_kwargs.setdefault("prefetch_factor", 4)
            dataloader_kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        dataloader_kwargs.setdefault("collate_fn", as_is)  # default_convert would turn packed numpy back into tensors
        feed = RingFeed(dataset, ring) if ring is not None else dataset
        self.dataloader = DataLoader(feed, batch_size=None, num_workers=num_workers, pin_memory=self.pin_memory,
                                     **dataloader_kwargs)
        self.skips_seen = 0  # shards skipped in the workers (on_error="warn") already logged here
        self.skips_logged: Set[Tuple[int, int, int]] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        cursor = self.dataset.cursor
        return cursor.track(self._batches(), cursor.epoch, counting=self.num_workers > 0)

    def _batches(self) -> Iterator[Dict[str, Any]]:
        ring = self.ring
        for batch in self.dataloader:
            if ring is not None:
                ring.release_unreferenced()
                batch = ring.unpack(batch)
                if self.pin_memory and not batch["spectrogram"].is_pinned():
                    batch["spectrogram"] = batch["spectrogram"].pin_memory()  # the slot is free again
            if self.num_workers:
                self._log_new_skips()
            yield batch

    def _log_new_skips(self) -> None:
        """A worker's skip (on_error="warn") logged again in the training process, where it is seen."""
        logs = self.dataset.error_logs()
        total = sum(error_log.totals()[0] for error_log in logs)
        if total == self.skips_seen:
            return
        self.skips_seen = total
        for i, error_log in enumerate(logs):
            for region, n, message in error_log.entries():
                if (i, region, n) not in self.skips_logged:
                    self.skips_logged.add((i, region, n))
                    log.warning("skipped in DataLoader worker %d: %s", region - 1, message)

    @property
    def consumed(self) -> int:
        return self.dataset.cursor.consumed

    def state_dict(self) -> Dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
