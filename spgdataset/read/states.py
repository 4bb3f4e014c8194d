"""Saved positions (`state_dict()`) checked field by field before `load_state_dict` changes anything.

A state comes back from a checkpoint file, a JSON file or a hand edit, so each field is checked for presence,
exact type and range, and the message names the field and what was expected: a state with `consumed` -5 or
1e18, or without `shards`, is refused instead of quietly giving a whole epoch or none. What the state must
agree with (seed, world size, shard set, windows) is compared afterwards, by the cursor (cursor.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np

from ..errors import shown
from .schedule import STOP_POLICIES

INT64_MAX = 2**63 - 1  # the shared tensors that hold the epoch and the resume point are int64

Check = Callable[[Any], Optional[str]]  # None when the value is fine, else what was expected


def is_integer(value: Any) -> bool:
    """An int (or numpy integer), not a bool: True would pass for 1 and 7.0 for 7 otherwise."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(lo: int = -INT64_MAX - 1, hi: int = INT64_MAX, none: bool = False) -> Check:
    """An integer in [lo, hi] (or None with `none`)."""
    expected = "an integer" + (f" >= {lo}" if lo > -INT64_MAX - 1 else "") + (f" <= {hi}" if hi < INT64_MAX else "")
    expected += " or None" if none else ""

    def check(value: Any) -> Optional[str]:
        if value is None and none:
            return None
        return None if is_integer(value) and lo <= value <= hi else expected
    return check


def text(choices: Sequence[str] = ()) -> Check:
    expected = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
    return lambda value: None if isinstance(value, str) and (not choices or value in choices) else expected


def is_finite_number(value: Any) -> bool:
    """An int or a float (numpy's too), not a bool, that is a finite float (10**400 is not: it has none)."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def real(value: Any) -> Optional[str]:
    return None if is_finite_number(value) else "a finite number"


def list_of(item: Check, length: Optional[int] = None) -> Check:
    """A list (what state_dict() and JSON give) of `length` items (any number when None), each passing `item`."""
    expected = f"a list of {length if length is not None else 'any number of'} items, each {item(None)}"

    def check(value: Any) -> Optional[str]:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            return expected
        return expected if any(item(v) for v in value) else None
    return check


MAX_WORLD, MAX_WORKERS = 1 << 16, 1 << 10  # a layout's ranks and DataLoader workers per rank, at most
MAX_SLOTS = 1 << 17  # ranks x workers of a finished stage: resuming shares out its slots' rests one by one


def stage_row(value: Any) -> Optional[str]:
    """A finished stage of the epoch (cursor.py): [world size, workers, items consumed], its slots bounded: a
    hand-edited world of 10**9 would otherwise keep a resume busy for hours."""
    expected = (f"[world size in 1..{MAX_WORLD}, DataLoader workers in 1..{MAX_WORKERS}, items consumed >= 0], "
                f"at most {MAX_SLOTS} ranks x workers")
    if not isinstance(value, list) or len(value) != 3:
        return expected
    checks = (integer(1, MAX_WORLD), integer(1, MAX_WORKERS), integer(0))
    if any(check(v) for check, v in zip(checks, value)) or value[0] * value[1] > MAX_SLOTS:
        return expected
    return None


POSITION: Dict[str, Check] = {"epoch": integer(0), "consumed": integer(0)}
STAGES: Dict[str, Check] = {"stages": list_of(stage_row)}
DATASET_FIELDS: Dict[str, Check] = {
    **POSITION, "seed": integer(), "num_workers": integer(0, MAX_WORKERS), "batch_size": integer(1, none=True),
    "world_size": integer(1, MAX_WORLD), "shards": text(), "window": list_of(integer(1), 2), "windows": text(),
    "chunks": list_of(integer(1), 2), **STAGES}
ROUTER_FIELDS: Dict[str, Check] = {
    **POSITION, "seed": integer(), "num_workers": integer(0, MAX_WORKERS), "batch_size": integer(1, none=True),
    "stop": text(STOP_POLICIES), "epoch_length": integer(1, none=True), "weights": list_of(real),
    "windows": list_of(integer(0)), "world_size": integer(1, MAX_WORLD), "shards": list_of(text()),
    "plans": list_of(text()), **STAGES}


def check_fields(state: Any, fields: Mapping[str, Check], what: str, exact: bool = True) -> None:
    """`state` is a mapping with every one of `fields`, each of its type and range; with `exact`, no other key
    (a router's state given to a dataset, or the other way round, is said as such)."""
    if not isinstance(state, Mapping):
        raise ValueError(f"a {what} state must be a dict (as {what}.state_dict() gives), got {type(state).__name__}")
    unknown = sorted(map(str, set(state) - set(fields)))
    if exact and unknown:
        raise ValueError(f"{what} state: unknown field(s) {shown(unknown)}; a {what}'s state has "
                         f"{', '.join(fields)} (is it another object's state?)")
    missing = [name for name in fields if name not in state]
    if missing:
        raise ValueError(f"{what} state: missing {', '.join(missing)} (every field of {what}.state_dict() is needed "
                         "to resume)")
    for name, check in fields.items():
        problem = check(state[name])
        if problem:
            raise ValueError(f"{what} state: {name} must be {problem}, got {shown(state[name])}")


def check_consumed(state: Mapping[str, Any], items: int, what: str) -> None:
    """`consumed` is at most the items of the state's epoch (its layout already agrees with this object's)."""
    if state["consumed"] > items:
        raise ValueError(f"{what} state: consumed must be in [0, {items}] (the items of epoch {state['epoch']} for "
                         f"this rank, with this {what}'s workers and batch size), got {shown(state['consumed'])}")
