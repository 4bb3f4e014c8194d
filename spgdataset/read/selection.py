"""What one dataset's epoch is made of: the files of its subset, shard by shard, and their window counts.

Computed once, at construction, from the index columns alone (no shard is opened, no object is made per
file): the split rule (rules/splits.py) over the stored path digests or a dictionary-encoded metadata key,
and the window rule (rules/windows.py) over frames and the content intervals. The epoch plan
(rules/plan.py) needs nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from ..format.index import Index
from ..rules.splits import subsets, unit64
from ..rules.windows import Spans, WindowRule, count_kept_spans


@dataclasses.dataclass
class Selection:
    """Files of the subset in the selected shards: selected shard j's are files[bounds[j]:bounds[j + 1]]
    (index positions, shard order), with counts[...] windows each."""

    shards: List[int]  # manifest positions of the selected shards, in selection order
    bounds: np.ndarray
    files: np.ndarray
    counts: np.ndarray

    def total(self) -> int:
        return int(self.counts.sum())


def select(index: Index, num_shards: int, shards: Sequence[int], split_bounds: np.ndarray, subset: int,
           split_key: Optional[str], rule: WindowRule) -> Selection:
    """The Selection of `shards` (manifest positions, of `num_shards`) for subset `subset` of `split_bounds`."""
    shard_bounds = index.shard_bounds(num_shards)
    if list(shards) == list(range(num_shards)) and len(split_bounds) == 1:  # everything, in index order
        files = np.arange(index.files, dtype=np.int64)
        return Selection(list(shards), shard_bounds, files, window_counts(index, None, rule))
    lengths = np.array([shard_bounds[k + 1] - shard_bounds[k] for k in shards], dtype=np.int64)
    files = np.concatenate([np.arange(shard_bounds[k], shard_bounds[k + 1]) for k in shards] or
                           [np.zeros(0, np.int64)]).astype(np.int64)
    keep = np.ones(len(files), dtype=bool)
    if len(split_bounds) > 1:
        keep = subsets(split_units(index, split_key)[files], split_bounds) == subset
    kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    edges = np.concatenate(([0], np.cumsum(lengths)))
    bounds = kept_before[edges]  # kept files before each selected shard
    files = files[keep]
    return Selection(list(shards), bounds, files, window_counts(index, files, rule))


def split_units(index: Index, split_key: Optional[str]) -> np.ndarray:
    """Each file's split unit (uint64): of its path, or of its `split_key` value where it has one (a key no file
    has, accepted with check_names=False, splits every file by its path)."""
    labels = None if split_key is None else index.metadata.get(split_key)
    if labels is None:
        return index.path_unit
    vocabulary_units = np.array([unit64(v) for v in labels.vocabulary] + [0], dtype=np.uint64)
    return np.where(labels.ids >= 0, vocabulary_units[labels.ids], index.path_unit)


def window_counts(index: Index, files: Optional[np.ndarray], rule: WindowRule) -> np.ndarray:
    """Kept windows of each of `files` (index positions; None: every file, columns read in place)."""
    offset = owned = None
    if files is None:
        frames, annotated = index.frames, index.annotated
        ends = (lambda offsets: (offsets[:-1], offsets[1:]))
        if index.offset is not None:
            offset, owned = index.offset, index.owned
    else:
        frames, annotated = index.frames[files], index.annotated[files]
        ends = (lambda offsets: (offsets[files], offsets[files + 1]))
        if index.offset is not None and index.owned is not None:
            offset, owned = index.offset[files], index.owned[files]
    content = [Spans(*ends(spans.offsets), spans.start, spans.stop)
               for spans in (index.checked_spans(name) for name in rule.content_names if name in index.intervals)]
    return count_kept_spans(rule, frames, annotated, content, offset, owned)
