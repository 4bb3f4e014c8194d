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
