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
    """len(kept_starts(...)) for many files at once, without a Python loop per window or per frame.

    The files are laid end to end; content masks come from one cumulative sum over interval edges. This is
    what lets len() of a 100-hour index be known in a fraction of a second; kept_starts stays the rule.
    """
    frames = np.asarray(frames, dtype=np.int64)
    counts = np.where(frames >= window, (frames - window) // step + 1, 0)
    if pad_short:
        counts = np.where((frames > 0) & (frames < window), 1, counts)
    if content_ratio <= 0 or not content_names:
        return counts
    files = np.array([i for i, iv in enumerate(intervals) if iv and counts[i] > 0], dtype=np.int64)
    if len(files) == 0:
        return counts
    lengths = np.maximum(frames[files], window)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    firsts, lasts = [], []
    for off, i in zip(offsets.tolist(), files.tolist()):
        for name in content_names:
            for start, stop in intervals[i].get(name, ()):
                first, last = max(-(-int(start) // hop_length), 0), min(-(-int(stop) // hop_length), int(frames[i]))
                if first < last:
                    firsts.append(off + first)
                    lasts.append(off + last)
    content = _content_before(np.array(firsts, dtype=np.int64), np.array(lasts, dtype=np.int64))
    per_file = counts[files]
    file_of = np.repeat(np.arange(len(files)), per_file)
    local = (np.arange(int(per_file.sum())) - np.repeat(np.cumsum(per_file) - per_file, per_file)) * step
    starts = offsets[file_of] + local
    kept = content(starts + window) - content(starts) >= content_ratio * window
    counts = counts.copy()
    counts[files] = np.bincount(file_of, weights=kept, minlength=len(files)).astype(np.int64)
    return counts


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
