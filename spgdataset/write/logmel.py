"""The log-mel computation of the writer (and the benchmarks)."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from ..format.features import FeatureConfig


class LogMel:
    """torchaudio's Spectrogram and MelScale followed by log(x + eps), returned C-ordered (n_mels, T).

    The same numbers as torchaudio.transforms.MelSpectrogram(power=2), faster: MelSpectrogram squares
    `abs()` of the complex STFT, a hypot (a square root per bin) that is then squared again and took a
    third of the writer's time; here the power is re^2 + im^2 directly (tools/bench.py, write side).
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.stft = torchaudio.transforms.Spectrogram(
            n_fft=config.n_fft, hop_length=config.hop_length, center=True, power=None)
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=config.n_mels, sample_rate=config.sample_rate, f_min=config.f_min, f_max=config.f_max,
            n_stft=config.n_fft // 2 + 1)

    def __call__(self, audio: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """`audio`: mono float32 samples at config.sample_rate. Returns (n_mels, T) of `dtype`, row-major."""
        with torch.inference_mode():
            spectrum = torch.view_as_real(self.stft(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))))
            power = spectrum[..., 0].square().add_(spectrum[..., 1].square())
            logmel = self.mel_scale(power).add_(self.config.log_eps).log_()
            # MelScale returns a column-major view: one pass makes it row-major (zero-copy readers) and casts
            out = torch.empty(logmel.shape, dtype=getattr(torch, dtype))
            out.copy_(logmel)
        return out.numpy()
