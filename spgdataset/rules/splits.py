"""Split assignment: whole files go to subsets by a stable hash, so it never moves when shards are re-cut.

The hashed value is the file's path (relative to the audio root) or a metadata value such as the
speaker, so that no speaker leaks between subsets. blake2b is stable across processes and machines
(Python's hash() is salted per process). A value's unit is its 8-byte blake2b digest read as a big-endian
integer over 2**64, in [0, 1); the index stores every path's digest (`path_units`), so a split of a million
files is one comparison over a column, not a million hashes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np


def unit64(value: Any) -> int:
    """The 8-byte blake2b digest of the text of `value`, as an integer (the same on every machine and run)."""
    return int.from_bytes(hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest(), "big")


def stable_unit(value: Any) -> float:
    """A value in [0, 1) from the text of `value`, the same on every machine and run."""
    return unit64(value) / 2.0**64


def path_units(paths: Iterable[str]) -> np.ndarray:
    """unit64 of every path (uint64), what the index stores."""
    return np.fromiter((unit64(p) for p in paths), dtype=np.uint64)


def normalize_split(split: Sequence[float]) -> np.ndarray:
    """Fractions -> cumulative upper bounds, e.g. (0.8, 0.1, 0.1) -> [0.8, 0.9, 1.0]."""
    fractions = np.asarray(split, dtype=np.float64)
    if fractions.ndim != 1 or len(fractions) == 0 or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split must be non-negative fractions with a positive sum, got {tuple(split)}")
    bounds = np.cumsum(fractions / fractions.sum())
    bounds[-1] = 1.0
    return bounds


def subset_of(path: str, metadata: Mapping[str, Any], bounds: np.ndarray, split_key: Optional[str] = None) -> int:
    """Index of the subset a file belongs to. Files lacking `split_key` are hashed by their path."""
    value = metadata.get(split_key, path) if split_key else path
    return int(np.searchsorted(bounds, stable_unit(value), side="right"))


def subsets(units: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """subset_of for many files at once, from their units (uint64: unit64 of the hashed value)."""
    return np.searchsorted(bounds, units.astype(np.float64) / 2.0**64, side="right")
