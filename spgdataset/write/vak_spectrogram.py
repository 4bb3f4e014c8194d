"""vak's spectrogram, value for value: what `vak.prep.spectrogram_dataset.spect.spectrogram` (vak 1.1.0) computes.

vak band-passes the audio (bandpass.py) when `freq_cutoffs` is set, then calls matplotlib's `mlab.specgram`
(NFFT = fft_size, noverlap = fft_size - step_size, mode "psd"): frames start at sample 0 and step by step_size
(a file shorter than one frame is zero-padded to it), a symmetric Hann window, a complex FFT of which the
one-sided half is kept, |X|^2 doubled except at DC (and Nyquist for an even size), divided by the rate and by
sum(window^2); time bins are the frames' centres. Then vak's transform ("log_spect" divides by the largest value
of every bin, before the band is cut) and threshold, then the bins with low <= f < high. All float64, as vak
stores it. The values agree with vak's files to rounding (tests/test_vak_reference.py holds them against files
vak 1.1.0 wrote).

This is the npz function's default (spgdataset.vak); shards keep centred frames (linear.py), where masks and
windows follow one rule for every kind of spectrogram.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from .bandpass import band_passed
from .linear import transform


def vak_spectrogram(audio: np.ndarray, rate: int, fft_size: int, step_size: int, thresh: Optional[float] = None,
                    transform_type: Optional[str] = None,
                    freq_cutoffs: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, f, t) of mono float64 `audio` at `rate`: s (bins, frames), f the bins' Hz, t the frames' centres (s)."""
    x = np.asarray(audio, dtype=np.float64)
    if freq_cutoffs:
        x = band_passed(x, float(freq_cutoffs[0]), float(freq_cutoffs[1]), rate)
    power, freqs, times = psd_frames(x, rate, fft_size, step_size)
    power = transform(power, transform_type, thresh)  # "log_spect": the peak of every bin, as in vak
    if freq_cutoffs:
        keep = np.flatnonzero((freqs >= freq_cutoffs[0]) & (freqs < freq_cutoffs[1]))
        power, freqs = power[keep, :], freqs[keep]
    return power, freqs, times


def psd_frames(x: np.ndarray, rate: int, n_fft: int, step: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """matplotlib's `specgram(x, NFFT=n_fft, Fs=rate, noverlap=n_fft - step)` with its defaults (mode "psd",
    one-sided, no detrend, Hann window). matplotlib takes a complex FFT and keeps its first half; the real FFT
    gives that half to rounding (2e-11 relative at worst on the reference files) in a third of the time."""
    if len(x) < n_fft:
        x = np.concatenate([x, np.zeros(n_fft - len(x))])
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::step]  # (frames, n_fft)
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = np.ascontiguousarray((spectrum.real ** 2 + spectrum.imag ** 2).T)  # (bins, frames)
    power[slice(1, -1) if n_fft % 2 == 0 else slice(1, None)] *= 2.0  # every bin but DC (and Nyquist) twice
    power /= rate
    power /= (window ** 2).sum()
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    times = np.arange(n_fft / 2, len(x) - n_fft / 2 + 1, step) / rate
    return power, freqs, times
