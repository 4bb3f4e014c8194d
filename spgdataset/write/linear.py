"""The linear spectrogram of birdsong work (vak's `spect_params`): STFT power cut to a band, optionally log.

vak computes it with matplotlib's `specgram` (mode "psd"): a symmetric Hann window, power scaled to a
one-sided density (|X|^2 / (rate * sum(w^2)), doubled except at DC and Nyquist), frequency bins kept when
f_min <= f < f_max, then one of vak's transforms. The same numbers here, with differences written down in
docs/vak.md: frames are centred like the log-mel's (frame t is centred on sample t * hop_length, so masks and
windows follow one rule for every kind of spectrogram), and the FFT is float32. With `bandpass` (vak's
numbers, bandpass.py) the audio is first filtered as vak filters it and "log_spect" divides by the largest
power of any bin, as vak does before it cuts the band; without it, by the band's largest (how sets written
before the option were made).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ..format.features import FeatureConfig
from .logmel import reflect_padded


class LinearSpectrogram:
    """(bins, T) float32: STFT power density of the bins in [f_min, f_max), then `transform_type`."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        n_fft = config.n_fft
        self.window = torch.hann_window(n_fft, periodic=False)  # numpy.hanning, matplotlib's window_hanning
        doubled = np.full(n_fft // 2 + 1, 2.0)
        doubled[0] = 1.0
        if n_fft % 2 == 0:
            doubled[-1] = 1.0  # the Nyquist bin has no mirror image
        scale = doubled / (config.sample_rate * float((self.window.double() ** 2).sum()))
        self.bins = config.linear_bins()
        self.scale = torch.from_numpy(scale[self.bins].astype(np.float32))[:, None]  # (bins, 1)
        self.all_scale = torch.from_numpy(scale.astype(np.float32))[:, None]
        self.padded = np.empty(0, dtype=np.float32)

    def __call__(self, audio: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """`audio`: mono float32 at config.sample_rate, more than n_fft // 2 samples. (bins, 1 + len // hop)."""
        self.padded, padded = reflect_padded(audio, self.config.n_fft // 2, self.padded)
        return self.of_padded(padded, dtype)

    def of_padded(self, padded: np.ndarray, dtype: str = "float32", peak: Optional[float] = None) -> np.ndarray:
        """The frames of samples already padded (see LogMel.of_padded). `peak`: the file's largest power, which
        "log_spect" divides by (a block of a long file is not the whole file); default the block's own."""
        power, largest = self.power_of_padded(padded)
        if peak is None and self.config.bandpass:
            peak = largest
        return np.ascontiguousarray(transform(power, self.config.transform_type, self.config.thresh, peak), dtype)

    def power_of_padded(self, padded: np.ndarray) -> Tuple[np.ndarray, float]:
        """(bins, frames) float64 power density before any transform, and the peak "log_spect" divides by:
        the largest power of any bin with `bandpass` (vak's), else of the band's."""
        config = self.config
        frames = torch.from_numpy(padded).unfold(0, config.n_fft, config.hop_length)
        with torch.inference_mode():
            spectrum = torch.fft.rfft(frames * self.window)
            if not config.bandpass:  # only the band's bins are ever squared
                spectrum = spectrum[:, self.bins[0] : self.bins[-1] + 1]
            power = torch.view_as_real(spectrum).square().sum(-1).t()  # (bins or all, T)
            power.mul_(self.all_scale if config.bandpass else self.scale)
            largest = float(power.max())
            if config.bandpass:
                power = power[self.bins[0] : self.bins[-1] + 1]
        return power.double().numpy(), largest


def transform(power: np.ndarray, transform_type: Optional[str], thresh: Optional[float],
              peak: Optional[float] = None) -> np.ndarray:
    """vak's transforms of a power spectrogram (float64, changed in place), with its threshold rules:
    none (values below thresh raised to it), "log_spect" (divided by its maximum, log10, floored at -thresh),
    "log_spect_plus_one" (log10(1 + x), floored at thresh), "log" (natural log of x + float64 eps).
    A thresh of 0 or None is no threshold, as in vak. `peak`: what "log_spect" divides by (default power.max())."""
    if transform_type == "log_spect":
        peak = power.max() if peak is None else peak
        with np.errstate(divide="ignore", invalid="ignore"):
            power = np.log10(power / peak)
        floor = -thresh if thresh else None
    elif transform_type == "log_spect_plus_one":
        power = np.log10(power + 1.0)
        floor = thresh or None
    elif transform_type == "log":
        power = np.log(np.abs(power) + np.finfo(np.float64).eps)
        floor = None
    else:
        floor = thresh or None
    if floor is not None:
        np.maximum(power, floor, out=power)
    return power
