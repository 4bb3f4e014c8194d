"""vak's Butterworth band-pass, run on the audio before a linear spectrogram whose band is cut at [low, high).

vak (prep/spectrogram_dataset/spect.py) filters with scipy: `butter(5, [low, high] / nyquist, btype="band")`
and `lfilter(b, a, audio)`, a causal IIR filter over the whole file from its first sample. Here the same design
and the same filter function, in float64, so that the values equal vak's. scipy is a dependency for this: an
IIR design and its filter are easy to get subtly wrong, and vak's numbers are scipy's.

A long recording is read a block at a time (blocks.py); FilteredSource carries the filter's state from one
block to the next, so the blocks give the samples the whole file would. It keeps the last block it filtered:
the reflection a centred STFT reads at the file's end lies inside it.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .blocks import Source

ORDER = 5  # vak's butter_bandpass default


def butter_band(low: float, high: float, rate: int) -> Tuple[np.ndarray, np.ndarray]:
    """(b, a) of vak's 5th-order Butterworth band-pass for [low, high] Hz at `rate`."""
    from scipy.signal import butter

    nyquist = 0.5 * rate
    b, a = butter(ORDER, [low / nyquist, high / nyquist], btype="band")
    return np.asarray(b), np.asarray(a)


def band_passed(audio: np.ndarray, low: float, high: float, rate: int) -> np.ndarray:
    """`audio` filtered as vak filters it: float64, from the first sample on."""
    from scipy.signal import lfilter

    b, a = butter_band(low, high, rate)
    return np.asarray(lfilter(b, a, np.asarray(audio, dtype=np.float64)))


class FilteredSource(Source):
    """`source`'s samples band-passed, any range at a time: a range that starts before the last one filtered
    starts the filter again from sample 0 (the writer reads in order, so that happens once per pass over a
    file); one that starts within it extends it."""

    def __init__(self, source: Source, low: float, high: float, rate: int) -> None:
        """`rate`: the source's samples' (the feature rate)."""
        self.source, self.name = source, source.name
        self.length, self.orig_rate, self.samples_count = source.length, source.orig_rate, source.samples_count
        self.exact_16bit = False  # filtered values are not the file's own
        self.b, self.a = butter_band(low, high, rate)
        self._restart()

    def _restart(self) -> None:
        self.position = 0  # the next sample the filter would take
        self.state = np.zeros(max(len(self.a), len(self.b)) - 1)  # at rest, as lfilter without zi starts
        self.last: Tuple[int, np.ndarray] = (0, np.zeros(0))

    def samples(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.zeros(0)
        start, done = self.last  # the filtered samples [start, position)
        if start <= lo and hi <= self.position:
            return done[lo - start : hi - start]
        if lo < start:
            self._restart()
            start, done = self.last
        kept = done[max(lo - start, 0) :] if lo <= self.position else done[:0]
        block = np.concatenate([kept, self._filter_to(hi)])  # what the filter adds extends what it did
        self.last = (hi - len(block), block)
        return block[len(block) - (hi - lo) :]

    def _filter_to(self, hi: int) -> np.ndarray:
        """Filter samples [position, hi), carrying the state; their output."""
        from scipy.signal import lfilter

        out: Any
        out, self.state = lfilter(self.b, self.a, self.source.samples(self.position, hi).astype(np.float64),
                                  zi=self.state)
        self.position = hi
        return np.asarray(out)
