"""The label rule: which metadata values are the same label, their order, and how they are stored in JSON.

Values are the JSON scalars metadata.json may hold. Two values are one label when they are equal as JSON
values: numbers by value (1 and 1.0 are one label, shown as 1), strings by text, true/false and null by
themselves; a number, a string and a boolean are never the same label (1, "1" and true are three). NaN is
one label (it equals nothing, itself included, in Python). The vocabulary of a key is its labels sorted:
booleans, numbers (NaN last), strings, null. A file without the key has no label (-1).

manifest.json is strict JSON, which has no NaN or infinities: those are stored as {"float": "NaN"},
{"float": "Infinity"} and {"float": "-Infinity"}.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def label_token(value: Any) -> Tuple[Hashable, ...]:
    """A hashable, sortable token: equal for values that are one label, ordered as the vocabulary is."""
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        if value != value:  # NaN: after every number
            return (1, math.inf, 1)
        return (1, value, 0)  # 1 and 1.0 compare and hash equal
    if isinstance(value, str):
        return (2, value)
    if value is None:
        return (3,)
    raise TypeError(f"a label must be a string, number, boolean or null, got {type(value).__name__}")


def canonical(value: Any) -> Any:
    """The one value that stands for a label: a whole float as an int (1.0 -> 1), anything else as it is."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def vocabularies(metadatas: Iterable[Mapping[str, Any]]) -> Dict[str, List[Any]]:
    """The sorted distinct labels of every metadata key, keys sorted."""
    tokens: Dict[str, Dict[Tuple[Hashable, ...], Any]] = {}
    for metadata in metadatas:
        for key, value in metadata.items():
            tokens.setdefault(key, {}).setdefault(label_token(value), canonical(value))
    return {key: [found[t] for t in sorted(found)] for key, found in sorted(tokens.items())}


def label_ids(vocab: Iterable[Any]) -> Dict[Tuple[Hashable, ...], int]:
    """token -> id for a vocabulary: look a value up with `ids.get(label_token(value), -1)`."""
    return {label_token(value): i for i, value in enumerate(vocab)}


def to_json(value: Any) -> Any:
    """A label as strict JSON can hold it."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")}
    return value


def from_json(value: Any) -> Any:
    """Undo to_json; anything that is not a label is a ValueError."""
    if isinstance(value, dict):
        if set(value) == {"float"} and value["float"] in _NON_FINITE:
            return _NON_FINITE[value["float"]]
        raise ValueError(f"{value!r} is not a label")
    label_token(value)  # raises TypeError for lists and other non-scalars
    return value


def merge_vocabularies(vocabs: Sequence[Sequence[Any]]) -> Tuple[List[Any], List[np.ndarray]]:
    """One sorted vocabulary over several, and per vocabulary a lookup array from its ids to the merged ids.

    Each lookup ends with an extra -1, so indexing it with -1 (a file without the label) gives -1.
    """
    tokens: Dict[Tuple[Hashable, ...], Any] = {}
    for vocab in vocabs:
        for value in vocab:
            tokens.setdefault(label_token(value), value)
    order = sorted(tokens)
    merged_id = {token: i for i, token in enumerate(order)}
    maps = [np.array([merged_id[label_token(v)] for v in vocab] + [-1], dtype=np.int64) for vocab in vocabs]
    return [tokens[t] for t in order], maps
