"""The frame and mask rule, in one place.

Frame t of a centred STFT is centred at sample t * hop, and a clip of n samples has 1 + n // hop frames.
Frame t lies inside the half-open interval [start, stop) (in samples) iff start <= t * hop < stop.
Writer, windows, content ratio and audio slices all go through these functions.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np


def num_frames(num_samples: int, hop_length: int) -> int:
    """Number of frames of a centred STFT over `num_samples` samples."""
    return 1 + num_samples // hop_length


def resampled_length(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Samples after resampling (torchaudio's rule: ceil(n * new / orig))."""
    return -(-num_samples * new_rate // orig_rate)


def rescale_sample(position: int, orig_rate: int, new_rate: int) -> int:
    """A sample position at `orig_rate` rounded to the nearest sample at `new_rate` (half up)."""
    return (2 * position * new_rate + orig_rate) // (2 * orig_rate)


def rescale_intervals(
    intervals: Mapping[str, Sequence[Sequence[int]]], orig_rate: int, new_rate: int
) -> Dict[str, List[List[int]]]:
    """Intervals in samples of `orig_rate` -> samples of `new_rate`, same names."""
    if orig_rate == new_rate:
        return {name: [[int(a), int(b)] for a, b in spans] for name, spans in intervals.items()}
    return {
        name: [[rescale_sample(int(a), orig_rate, new_rate), rescale_sample(int(b), orig_rate, new_rate)] for a, b in spans]
        for name, spans in intervals.items()
    }


def frame_span(start: int, stop: int, hop_length: int) -> Tuple[int, int]:
    """Frames [first, last) whose centres t * hop fall in the sample interval [start, stop)."""
    return -(-start // hop_length), -(-stop // hop_length)


def interval_mask(spans: Sequence[Sequence[int]], frames: int, hop_length: int) -> np.ndarray:
    """Boolean (frames,) mask: True where frame t lies in any of the sample intervals `spans`."""
    mask = np.zeros(frames, dtype=bool)
    for start, stop in spans:
        first, last = frame_span(int(start), int(stop), hop_length)
        mask[max(first, 0) : max(min(last, frames), 0)] = True  # a span before the file marks nothing (no wrap)
    return mask


def union_mask(
    intervals: Mapping[str, Sequence[Sequence[int]]], names: Sequence[str], frames: int, hop_length: int
) -> np.ndarray:
    """Union of the masks of the interval `names` (absent names contribute nothing)."""
    spans = [span for name in names for span in intervals.get(name, ())]
    return interval_mask(spans, frames, hop_length)
