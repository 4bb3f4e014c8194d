"""The canonical order of an epoch's windows: a function of (seed, epoch) and the subset's window counts alone.

    shards      in a seeded order per epoch (the order of epoch 0 every epoch with a memory cache, so that each
                worker finds its files in its own cache)
    files       in shard order, each moved by a random amount of up to `file_buffer` places inside its shard
    chunks      consecutive files, at least `chunk_windows` windows each; the first chunks of the epoch are
                smaller (a ramp: `first_windows`, then four times as many each, holding at least RAMP_FILES files)
    windows     numbered in file order inside their chunk, then put in a seeded permutation per (epoch, chunk)

Why one order for any layout: the world size and the DataLoader workers then decide only who reads which range
of it (rules/elastic.py), so an epoch stopped under one layout continues under another with no window twice.
A batch is a run of one chunk's permuted windows: its windows are a uniform sample of that chunk's, i.e. of the
files that make the chunk (docs/dataset.md, "Shuffle quality").
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from .plan import epoch_rng, shard_order

RAMP_FILES = 8  # files a chunk of the ramp holds at least: its batches mix that many
_FILES, _WINDOWS = 4, 5  # random streams of (seed, epoch, ...) for the file moves and a chunk's permutation


class Piece(NamedTuple):
    """Windows of chunk `chunk` (numbered inside it), in the order they are yielded."""

    chunk: int
    windows: np.ndarray


@dataclasses.dataclass
class EpochOrder:
    """One epoch's order: `files[i]` (selection file ids) hold `counts[i]` windows; chunk c is
    files[chunk_files[c]:chunk_files[c + 1]], windows [chunk_starts[c], chunk_starts[c + 1]) of the epoch."""

    files: np.ndarray
    counts: np.ndarray
    chunk_files: np.ndarray
    chunk_starts: np.ndarray
    seed: int
    epoch: int
    shuffle: bool
    shards: np.ndarray
    _reach: Optional[Tuple[np.ndarray, np.ndarray]] = dataclasses.field(default=None, init=False, repr=False,
                                                                         compare=False)

    @property
    def total(self) -> int:
        return int(self.chunk_starts[-1])

    def shards_after(self, shard: int, shard_files: np.ndarray, windows: int, most: int = 8) -> List[int]:
        """The shards whose files come next after those of `shard` (shard j holds shard_files[j] files), as many as
        hold `windows` windows, at least one and at most `most`: what is read next (a chunk's worth)."""
        if self._reach is None:
            rank = np.empty(len(self.shards), dtype=np.int64)
            rank[self.shards] = np.arange(len(self.shards))
            lengths = shard_files[self.shards]
            ends = np.cumsum(lengths)
            cumulative = np.concatenate(([0], np.cumsum(self.counts, dtype=np.int64)))
            self._reach = (rank, np.cumsum(cumulative[ends] - cumulative[ends - lengths]))
        rank, reached = self._reach
        r = int(rank[shard])
        last = int(np.searchsorted(reached, reached[r] + windows, side="left"))
        return self.shards[r + 1 : min(max(last, r + 1), r + most) + 1].tolist()

    def permutation(self, chunk: int) -> np.ndarray:
        """Chunk `chunk`'s windows in the order they are yielded (numbered in file order inside the chunk)."""
        count = int(self.chunk_starts[chunk + 1] - self.chunk_starts[chunk])
        if not self.shuffle:
            return np.arange(count, dtype=np.int64)
        return epoch_rng(self.seed, self.epoch, _WINDOWS, chunk).permutation(count)

    def pieces(self, ranges: np.ndarray) -> Iterator[Piece]:
        """The chunks' windows that ranges [lo, hi) of the epoch's order cover, in that order; consecutive parts
        of one chunk come as one piece."""
        pending: Optional[Piece] = None
        for lo, hi in ranges.tolist():
            first = int(np.searchsorted(self.chunk_starts, lo, side="right")) - 1
            for c in range(first, len(self.chunk_starts) - 1):
                start = int(self.chunk_starts[c])
                if start >= hi:
                    break
                windows = self.permutation(c)[max(lo - start, 0) : hi - start]
                if not len(windows):
                    continue
                if pending is not None and pending.chunk == c:
                    pending = Piece(c, np.concatenate([pending.windows, windows]))
                    continue
                if pending is not None:
                    yield pending
                pending = Piece(c, windows)
        if pending is not None:
            yield pending

    def chunk_file_windows(self, chunk: int) -> np.ndarray:
        """Where each file of chunk `chunk` starts among the chunk's windows, and the chunk's end."""
        lo, hi = int(self.chunk_files[chunk]), int(self.chunk_files[chunk + 1])
        return np.concatenate(([0], np.cumsum(self.counts[lo:hi])))


def epoch_order(bounds: np.ndarray, counts: np.ndarray, seed: int, epoch: int, shuffle: bool, file_buffer: int,
                chunk_windows: int, first_windows: int, fixed_shards: bool = False) -> EpochOrder:
    """The order of epoch `epoch` over a selection (shard j's files are bounds[j]:bounds[j + 1], with `counts`
    windows each). `fixed_shards`: the shard order of epoch 0 (a memory cache keeps each worker's files)."""
    shards = shard_order(len(bounds) - 1, seed, 0 if fixed_shards else epoch, shuffle)
    files = file_sequence(bounds, shards, epoch_rng(seed, epoch, _FILES) if shuffle else None, file_buffer)
    ordered = counts[files]
    chunk_files = chunk_bounds(ordered, chunk_windows, first_windows)
    cumulative = np.concatenate(([0], np.cumsum(ordered, dtype=np.int64)))
    return EpochOrder(files, ordered, chunk_files, cumulative[chunk_files], seed, epoch, shuffle, shards)


def file_sequence(bounds: np.ndarray, shards: np.ndarray, rng: Optional[np.random.Generator],
                  file_buffer: int) -> np.ndarray:
    """Selection file ids, shard after shard in `shards` order; with `rng`, each file moved inside its shard by
    sorting on its place plus a uniform draw in [0, file_buffer): a shuffle buffer's local mixing, as a sort."""
    lengths = (bounds[1:] - bounds[:-1])[shards]
    rank = np.repeat(np.arange(len(shards), dtype=np.int64), lengths)
    within = np.arange(len(rank), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    files = np.repeat(bounds[:-1][shards], lengths) + within
    if rng is None or file_buffer <= 1 or not len(files):
        return files.astype(np.int64)
    span = float(lengths.max() + file_buffer + 1)  # shard after shard on one axis: one argsort, 7x a lexsort's speed
    key = rank * span + within + rng.random(len(files)) * file_buffer
    return files[np.argsort(key)].astype(np.int64)


def chunk_bounds(counts: np.ndarray, chunk_windows: int, first_windows: int) -> np.ndarray:
    """File positions where chunks start, and the end: each chunk closes at the first file where it holds
    `chunk_windows` windows, or, on the ramp, the target (`first_windows`, then four times the one before) and
    RAMP_FILES files with windows. Why the ramp: the first batch waits for its whole chunk to be read and decoded
    (a full chunk is a third of a 1-hour corpus), while a small first chunk is a few files."""
    windows = np.cumsum(counts, dtype=np.int64)
    with_windows = np.cumsum(counts > 0, dtype=np.int64)
    starts: List[int] = [0]
    target, n = min(first_windows, chunk_windows), len(counts)
    while starts[-1] < n:
        s = starts[-1]
        base = int(windows[s - 1]) if s else 0
        end = int(np.searchsorted(windows, base + chunk_windows, side="left"))
        if target < chunk_windows:
            base_files = int(with_windows[s - 1]) if s else 0
            ramp = max(int(np.searchsorted(windows, base + target, side="left")),
                       int(np.searchsorted(with_windows, base_files + RAMP_FILES, side="left")))
            end, target = min(end, ramp), min(4 * target, chunk_windows)
        starts.append(min(end + 1, n))
    return np.array(starts if n else [0, 0], dtype=np.int64)
