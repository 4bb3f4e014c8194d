"""A DataLoader set up for SpectrogramDataset, with a resumable position in the epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterator, Mapping

from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from .dataset import SpectrogramDataset


def as_is(batch: Any) -> Any:
    """The dataset already yields finished batches."""
    return batch


class SpectrogramLoader:
    """Iterates batches built in the dataset's workers and counts them, so a job can resume mid-epoch.

    `state_dict()` after n batches + `load_state_dict()` in a new process with the same dataset settings:
    the next iteration yields exactly the batches the uninterrupted run would have yielded after the n-th.
    """

    def __init__(self, dataset: "SpectrogramDataset", **dataloader_kwargs: Any) -> None:
        self.dataset = dataset
        dataloader_kwargs.setdefault("collate_fn", as_is)  # default_convert would turn packed numpy back into tensors
        self.dataloader = DataLoader(dataset, batch_size=None, **dataloader_kwargs)
        self.pin_memory = bool(dataloader_kwargs.get("pin_memory"))
        self.consumed = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        resume_epoch, resume_at = (int(v) for v in self.dataset._resume)
        self.consumed = resume_at if resume_epoch == self.dataset.epoch else 0
        ring = getattr(self.dataset, "_ring", None)
        for batch in self.dataloader:
            if ring is not None:
                ring.release_unreferenced()
                batch = ring.unpack(batch)
                if self.pin_memory and not batch["spectrogram"].is_pinned():
                    batch["spectrogram"] = batch["spectrogram"].pin_memory()  # the slot is free again
            self.consumed += 1
            yield batch
        self.dataset._resume[0] = -1  # the resumed epoch is over; later epochs start from their beginning

    def state_dict(self) -> Dict[str, Any]:
        state = self.dataset.state_dict()
        state["consumed"] = self.consumed
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.dataset.load_state_dict(state)
        self.consumed = int(state["consumed"])
