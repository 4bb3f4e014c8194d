"""A DataLoader set up for SpectrogramDataset, with a resumable position in the epoch."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping, Optional, Set, Tuple

import torch
from torch.utils.data import DataLoader

from .ring import BatchRing

if TYPE_CHECKING:
    from .dataset import SpectrogramDataset

log = logging.getLogger("spgdataset")


def as_is(batch: Any) -> Any:
    """The dataset already yields finished batches."""
    return batch


class SpectrogramLoader:
    """Iterates batches built in the dataset's workers and counts them, so a job can resume mid-epoch.

    `state_dict()` after n batches + `load_state_dict()` in a new process with the same dataset settings:
    the next iteration yields exactly the batches the uninterrupted run would have yielded after the n-th.
    """

    def __init__(self, dataset: "SpectrogramDataset", num_workers: int, pin_memory: Optional[bool] = None,
                 persistent_workers: Optional[bool] = None, ring: Optional[BatchRing] = None,
                 **dataloader_kwargs: Any) -> None:
        """Defaults: pinned memory on CUDA; with workers, 4 batches prefetched each and workers kept across
        epochs. `ring`: the shared batch slots the dataset's workers gather into (ring.py)."""
        self.dataset, self.ring = dataset, ring
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        if num_workers > 0:
            dataloader_kwargs.setdefault("prefetch_factor", 4)
            dataloader_kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        dataloader_kwargs.setdefault("collate_fn", as_is)  # default_convert would turn packed numpy back into tensors
        self.dataloader = DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=self.pin_memory,
                                     **dataloader_kwargs)
        self.consumed = 0
        self.skips_seen = 0  # shards skipped in the workers (on_error="warn") already logged here
        self.skips_logged: Set[Tuple[int, int, int]] = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        resume_epoch, resume_at = (int(v) for v in self.dataset._resume)
        self.consumed = resume_at if resume_epoch == self.dataset.epoch else 0
        ring = self.ring
        for batch in self.dataloader:
            if ring is not None:
                ring.release_unreferenced()
                batch = ring.unpack(batch)
                if self.pin_memory and not batch["spectrogram"].is_pinned():
                    batch["spectrogram"] = batch["spectrogram"].pin_memory()  # the slot is free again
            self.consumed += 1
            if self.dataloader.num_workers:
                self._log_new_skips()
            yield batch
        self.dataset._resume[0] = -1  # the resumed epoch is over; later epochs start from their beginning

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

    def state_dict(self) -> Dict[str, Any]:
        state = self.dataset.state_dict()
        state["consumed"] = self.consumed
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self.consumed = int(state["consumed"])
