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


SPLIT_TOLERANCE = 1e-3  # how far from 1 a split's sum may be: fractions written with three decimals, (0.333,) * 3


def normalize_split(split: Sequence[float]) -> np.ndarray:
    """Fractions -> cumulative upper bounds, e.g. (0.8, 0.1, 0.1) -> [0.8, 0.9, 1.0].

    The one check of a split (the dataset's `split=`, spg-inspect's --split): finite fractions >= 0 that sum to
    1 within SPLIT_TOLERANCE. Anything else is a mistake to say, not to normalise: (80, 10, 10) or
    (0.8, 0.3, 0.1) would silently become other fractions, and a NaN would send every file to subset 0.
    """
    try:
        fractions = np.asarray(split, dtype=np.float64)
    except (TypeError, ValueError):
        fractions = np.zeros((0, 0))
    shown = tuple(split) if isinstance(split, (list, tuple)) else split
    if fractions.ndim != 1 or len(fractions) == 0:
        raise ValueError(f"split must be a sequence of fractions of the files, like (0.8, 0.1, 0.1), got {shown!r}")
    bad = [f"{f:g}" for f in fractions if not (np.isfinite(f) and f >= 0)]
    if bad:
        raise ValueError(f"split {shown}: {', '.join(bad)} is not a fraction (each part is a finite fraction >= 0 "
                         "of the files, and they sum to 1, like (0.8, 0.1, 0.1))")
    total = float(fractions.sum())
    if total <= 0:
        raise ValueError(f"split {shown} sums to 0: the fractions must sum to 1, like (0.8, 0.1, 0.1)")
    if abs(total - 1) > SPLIT_TOLERANCE:
        suggested = ", ".join(f"{f:.4g}" for f in fractions / total)
        raise ValueError(f"split {shown} sums to {total:g}, not 1: the parts are fractions of the files; "
                         f"did you mean ({suggested}{',' * (len(fractions) == 1)})?")
    bounds = np.cumsum(fractions / total)
    bounds[-1] = 1.0
    return bounds


def subset_of(path: str, metadata: Mapping[str, Any], bounds: np.ndarray, split_key: Optional[str] = None) -> int:
    """Index of the subset a file belongs to. Files lacking `split_key` are hashed by their path."""
    value = metadata.get(split_key, path) if split_key else path
    return int(np.searchsorted(bounds, stable_unit(value), side="right"))


def subsets(units: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """subset_of for many files at once, from their units (uint64: unit64 of the hashed value)."""
    return np.searchsorted(bounds, units.astype(np.float64) / 2.0**64, side="right")
