"""Where an epoch is: its number, and after a restart, how far the saved run had got.

One small object used alike by the dataset, the router and the loader (none of them reads another's
state). The epoch and the resume point live in shared memory, so persistent DataLoader workers see
`set_epoch` and `load_state_dict` made in the training process after they started.

Resume on another layout (world size x workers): the saved run becomes a finished *stage* of the epoch, recorded
as (world size, workers, items consumed per rank), and the rest of the epoch is shared out anew (rules/elastic.py).
The stages of the epoch being resumed live in shared memory too (MAX_STAGES of them).

Resume on the same layout, with DataLoader workers: a DataLoader takes items from its workers in turn, and a
restarted one starts again at worker 0. So after `load_state_dict`, worker w plays the role of worker (w + next) % n,
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
from .states import MAX_SLOTS, POSITION, check_consumed, check_fields

T = TypeVar("T")
MAX_STAGES = 64  # resumes on another layout within one epoch
StageRow = Tuple[int, int, int]  # (world size, DataLoader workers, items consumed per rank) of a finished stage


def current_worker() -> Tuple[int, int, bool]:
    """(worker id, workers, in a DataLoader worker?): the one place that asks torch."""
    info = get_worker_info()
    return (0, 1, False) if info is None else (info.id, info.num_workers, True)


class EpochCursor:
    """The epoch (shared), the resume point (shared), and the items consumed in this process."""

    def __init__(self) -> None:
        self.epoch_tensor = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.resume = torch.tensor([-1, 0], dtype=torch.int64).share_memory_()  # (epoch, items consumed)
        # row 0: (stages, their epoch); rows 1...: the finished stages, kept after the epoch ends so that a state
        # saved then still says which windows the epoch's stages yielded
        self.stages = torch.zeros((MAX_STAGES + 1, 3), dtype=torch.int64).share_memory_()
        self.consumed = 0  # items this epoch (this stage of it), counted where they reach the training loop

    @property
    def epoch(self) -> int:
        return int(self.epoch_tensor[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch_tensor[0] = int(epoch)

    def stages_of(self, epoch: int) -> List[StageRow]:
        """The finished stages of `epoch` when it is the one that was resumed, else none."""
        if int(self.stages[0, 1]) != epoch:
            return []
        rows = self.stages[1 : 1 + int(self.stages[0, 0])].tolist()
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def state_dict(self, plan: Mapping[str, Any]) -> Dict[str, Any]:
        """The position, with `plan`: what the epoch's order depends on (checked on load)."""
        stages = [list(row) for row in self.stages_of(self.epoch)]
        return {"epoch": self.epoch, "consumed": self.consumed, **plan, "stages": stages}

    def load_state_dict(self, state: Mapping[str, Any], plan: Mapping[str, Any], required: Sequence[str],
                        what: str, items: Optional[Callable[[int, List[StageRow], int, int], int]] = None,
                        layout: Sequence[str] = ()) -> None:
        """Resume epoch `state["epoch"]` after `state["consumed"]` items, if the plan is the same.

        Every entry of `plan` is compared with the state's; those in `required` must be in the state, the
        others only when present. `layout`: the entries (world size, workers) that may differ, which make the
        saved run a finished stage. `items(epoch, stages, world, workers)`: a rank's items in the stage after
        `stages` on that layout, the most `consumed` can be. All is checked before anything changes: a refused
        state leaves the cursor as it was."""
        check_fields(state, POSITION, what, exact=False)
        for name, mine in plan.items():
            if name not in layout and (name in required or name in state) and state.get(name) != mine:
                raise ValueError(f"state was saved with {name}={shown(state.get(name))}, this {what} has {mine!r}: "
                                 "the epoch plan would differ")
        epoch, consumed = int(state["epoch"]), int(state["consumed"])
        stages: List[StageRow] = [(int(a), int(b), int(c)) for a, b, c in state.get("stages", [])]
        moved = any(state.get(name) != plan[name] for name in layout)
        slots = int(state.get("world_size", 1)) * max(int(state.get("num_workers", 0)), 1)
        if moved and slots > MAX_SLOTS:  # it would become a finished stage, whose slots are shared out one by one
            raise ValueError(f"{what} state: world_size x num_workers must be at most {MAX_SLOTS} to resume on "
                             f"another layout, got {state.get('world_size')} x {state.get('num_workers')}")
        if items is not None:
            saved = (int(state.get("world_size", 1)), max(int(state.get("num_workers", 0)), 1))
            check_consumed(state, items(epoch, stages, *saved), what)
        if moved and consumed:  # a stage that yielded nothing leaves the same windows to share out
            stages.append((int(state["world_size"]), max(int(state["num_workers"]), 1), consumed))
            consumed = 0
        if len(stages) > MAX_STAGES:
            raise ValueError(f"{what} state: more than {MAX_STAGES} resumes on another layout within epoch {epoch}")
        self.set_epoch(epoch)
        self.stages[0, 0], self.stages[0, 1] = len(stages), epoch
        if stages:
            self.stages[1 : 1 + len(stages)] = torch.tensor(stages, dtype=torch.int64)
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
