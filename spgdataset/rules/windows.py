"""The window rule: which (start, W) frame windows a file yields.

W = round(window_size_sec * sr / hop) frames, step S = round(window_offset_sec * sr / hop) frames.
Starts are 0, S, 2S, ... while start + W <= T. Where a file is annotated (has any interval names),
a window is kept only if at least `content_ratio` of its W frames lie in the content mask
(the union of the chosen content interval names; with no names chosen there is no filter).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from .frames import union_mask


def window_frames(seconds: float, sample_rate: int, hop_length: int) -> int:
    """A duration in seconds as a whole number of frames (at least 1)."""
    frames = int(round(seconds * sample_rate / hop_length))
    if frames < 1:
        raise ValueError(f"{seconds} s is less than one frame at {sample_rate} Hz with hop {hop_length}")
    return frames


def window_starts(frames: int, window: int, step: int) -> np.ndarray:
    """All window starts (in frames) of a file of `frames` frames, before content filtering."""
    if frames < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, frames - window + 1, step, dtype=np.int64)


def window_content(mask: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Number of True frames of `mask` in each window [start, start + window)."""
    cumulative = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return cumulative[starts + window] - cumulative[starts]


def kept_starts(
    frames: int,
    intervals: Optional[Mapping[str, Sequence[Sequence[int]]]],
    window: int,
    step: int,
    hop_length: int,
    content_names: Sequence[str],
    content_ratio: float,
    pad_short: bool = False,
) -> np.ndarray:
    """Window starts of one file after the content-ratio filter (see module docstring).

    A file shorter than one window yields nothing, or with `pad_short` one window at 0 that the
    reader pads (its padded frames count as non-content).
    """
    if pad_short and 0 < frames < window:
        starts = np.zeros(1, dtype=np.int64)
    else:
        starts = window_starts(frames, window, step)
    if not intervals or not content_names or content_ratio <= 0 or len(starts) == 0:
        return starts  # unannotated file, no content chosen, or no filter asked for
    mask = union_mask(intervals, content_names, max(frames, window), hop_length)
    mask[frames:] = False
    return starts[window_content(mask, starts, window) >= content_ratio * window]


def count_kept(
    frames: Sequence[int],
    intervals: Sequence[Optional[Mapping[str, Sequence[Sequence[int]]]]],
    window: int,
    step: int,
    hop_length: int,
    content_names: Sequence[str],
    content_ratio: float,
    pad_short: bool = False,
) -> np.ndarray:
    """len(kept_starts(...)) for many files at once, given as per-file interval dicts (see count_kept_spans)."""
    annotated = np.array([bool(iv) for iv in intervals], dtype=bool)
    spans = [(i, s) for i, iv in enumerate(intervals) if iv for name in content_names for s in iv.get(name, ())]
    span_file = np.array([i for i, _ in spans], dtype=np.int64)
    edges = np.array([s for _, s in spans], dtype=np.int64).reshape(-1, 2)
    return count_kept_spans(frames, annotated, span_file, edges[:, 0], edges[:, 1], window, step, hop_length,
                            content_ratio if content_names else 0.0, pad_short)


def count_kept_spans(
    frames: np.ndarray,
    annotated: np.ndarray,
    span_file: np.ndarray,
    span_start: np.ndarray,
    span_stop: np.ndarray,
    window: int,
    step: int,
    hop_length: int,
    content_ratio: float,
    pad_short: bool = False,
    block_windows: int = 1 << 22,
) -> np.ndarray:
    """len(kept_starts(...)) for every file, from columns: no Python loop per file, window or frame.

    `annotated[i]`: file i has interval names; the content spans (samples, half-open, any names chosen as
    content) are given flat, span j belonging to file `span_file[j]`. Files are laid end to end in blocks of
    about `block_windows` windows (bounded memory at any corpus size); content comes from one cumulative sum
    over merged span edges per block. kept_starts stays the rule; this is its count, and tests hold the two
    equal.
    """
    frames = np.asarray(frames, dtype=np.int64)
    counts = np.where(frames >= window, (frames - window) // step + 1, 0)
    if pad_short:
        counts = np.where((frames > 0) & (frames < window), 1, counts)
    if content_ratio <= 0:
        return counts
    files = np.flatnonzero(np.asarray(annotated, dtype=bool) & (counts > 0))
    order = np.argsort(span_file, kind="stable")
    span_file, span_start, span_stop = span_file[order], span_start[order], span_stop[order]
    cumulative = np.cumsum(counts[files])
    lo = 0
    while lo < len(files):
        hi = int(np.searchsorted(cumulative, (cumulative[lo - 1] if lo else 0) + block_windows, side="right"))
        hi = max(hi, lo + 1)
        block = files[lo:hi]
        a, b = np.searchsorted(span_file, [block[0], block[-1] + 1])
        counts[block] = _kept_in_block(frames, counts, block, span_file[a:b], span_start[a:b], span_stop[a:b],
                                       window, step, hop_length, content_ratio)
        lo = hi
    return counts


def _kept_in_block(frames: np.ndarray, counts: np.ndarray, block: np.ndarray, span_file: np.ndarray,
                   span_start: np.ndarray, span_stop: np.ndarray, window: int, step: int, hop_length: int,
                   content_ratio: float) -> np.ndarray:
    """Kept window counts of the files `block` (sorted positions), given their spans."""
    lengths = np.maximum(frames[block], window)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    where = np.searchsorted(block, span_file)  # each span's file as a position in the block
    inside = (where < len(block)) & (block[np.minimum(where, len(block) - 1)] == span_file)
    where, span_start, span_stop = where[inside], span_start[inside], span_stop[inside]
    first = np.maximum(-(-span_start // hop_length), 0)
    last = np.minimum(-(-span_stop // hop_length), frames[block][where])
    keep = first < last
    content = _content_before(offsets[where][keep] + first[keep], offsets[where][keep] + last[keep])
    per_file = counts[block]
    file_of = np.repeat(np.arange(len(block)), per_file)
    local = (np.arange(int(per_file.sum())) - np.repeat(np.cumsum(per_file) - per_file, per_file)) * step
    starts = offsets[file_of] + local
    kept = content(starts + window) - content(starts) >= content_ratio * window
    return np.bincount(file_of, weights=kept, minlength=len(block)).astype(np.int64)


def _content_before(firsts: np.ndarray, lasts: np.ndarray):
    """C(x): how many frames before x lie in the union of the spans [firsts, lasts) (frames, any order)."""
    if len(firsts) == 0:
        return lambda x: np.zeros_like(x)
    order = np.argsort(firsts, kind="stable")
    firsts, lasts = firsts[order], lasts[order]
    reach = np.maximum.accumulate(lasts)
    new = np.ones(len(firsts), dtype=bool)
    new[1:] = firsts[1:] > reach[:-1]  # a span starting past everything before it opens a new merged span
    starts = firsts[new]
    stops = np.maximum.reduceat(lasts, np.nonzero(new)[0])
    before = np.concatenate(([0], np.cumsum(stops - starts)))

    def content(x: np.ndarray) -> np.ndarray:
        j = np.searchsorted(stops, x, side="right")  # merged spans ending at or before x
        inside = np.where(j < len(starts), np.clip(x - starts[np.minimum(j, len(starts) - 1)], 0, None), 0)
        return before[j] + inside

    return content
