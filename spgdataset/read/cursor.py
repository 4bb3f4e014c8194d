"""Where an epoch is: its number, and after a restart, how far the saved run had got.

One small object used alike by the dataset, the router and the loader (none of them reads another's
state). The epoch and the resume point live in shared memory, so persistent DataLoader workers see
`set_epoch` and `load_state_dict` made in the training process after they started.

Resume, with DataLoader workers: a DataLoader takes items from its workers in turn, and a restarted one
starts again at worker 0. So after `load_state_dict`, worker w plays the role of worker (w + next) % n,
where `next` is the worker whose turn was next, and skips the items that role had delivered
(rules/plan.resume_point): the items after the restart are exactly those the uninterrupted run would
have yielded, in the same order.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import torch
from torch.utils.data import get_worker_info

from ..rules.plan import resume_point
from ..errors import shown
from .states import POSITION, check_consumed, check_fields

T = TypeVar("T")


def current_worker() -> Tuple[int, int, bool]:
    """(worker id, workers, in a DataLoader worker?): the one place that asks torch."""
    info = get_worker_info()
    return (0, 1, False) if info is None else (info.id, info.num_workers, True)


class EpochCursor:
    """The epoch (shared), the resume point (shared), and the items consumed in this process."""

    def __init__(self) -> None:
        self.epoch_tensor = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.resume = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()  # (epoch, items consumed)
        self.consumed = 0  # items this epoch, counted where they reach the training loop

    @property
    def epoch(self) -> int:
        return int(self.epoch_tensor[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch_tensor[0] = int(epoch)

    def state_dict(self, plan: Mapping[str, Any]) -> Dict[str, Any]:
        """The position, with `plan`: what the epoch's order depends on (checked on load)."""
        return {"epoch": self.epoch, "consumed": self.consumed, **plan}

    def load_state_dict(self, state: Mapping[str, Any], plan: Mapping[str, Any], required: Sequence[str],
                        what: str, items: Optional[Callable[[int], int]] = None) -> None:
        """Resume epoch `state["epoch"]` after `state["consumed"]` items, if the plan is the same.

        Every entry of `plan` is compared with the state's; those in `required` must be in the state, the
        others only when present. `items(epoch)`: the items of that epoch, the most `consumed` can be. All is
        checked before anything changes: a refused state leaves the cursor as it was."""
        check_fields(state, POSITION, what, exact=False)
        for name, mine in plan.items():
            if (name in required or name in state) and state.get(name) != mine:
                raise ValueError(f"state was saved with {name}={shown(state.get(name))}, this {what} has {mine!r}: "
                                 "the epoch plan would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        if items is not None:
            check_consumed(state, items(epoch), what)
        self.set_epoch(epoch)
        self.resume[0], self.resume[1] = epoch, consumed
        self.consumed = consumed

    def resumed_at(self, epoch: int) -> int:
        """Items already consumed of `epoch` when it is the one being resumed, else 0."""
        return int(self.resume[1]) if int(self.resume[0]) == epoch else 0

    def role(self, worker: int, num_workers: int, epoch: int,
             items_per_worker: Callable[[int], List[int]]) -> Tuple[int, int]:
        """(the worker this one plays, items that role already delivered): (worker, 0) unless resuming."""
        consumed = self.resumed_at(epoch)
        if consumed <= 0:
            return worker, 0
        taken, first = resume_point(consumed, items_per_worker(num_workers))
        role = (worker + first) % num_workers
        return role, taken[role]

    def track(self, items: Iterator[T], epoch: int, counting: bool) -> Iterator[T]:
        """Pass `items` on; with `counting` (they reach the training loop here) count them, from the resume
        point of `epoch`; when they are all through, the resumed epoch is over."""
        if counting:
            self.consumed = self.resumed_at(epoch)
        for item in items:
            if counting:
                self.consumed += 1
            yield item
        if counting:
            self.finish()

    def finish(self) -> None:
        """Later epochs start from their beginning."""
        self.resume[0] = -1
