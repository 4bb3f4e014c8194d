"""The log-mel computation of the writer (and the benchmarks)."""

from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np
import torch
import torchaudio

from ..format.features import FeatureConfig


class LogMel:
    """log(mel(|STFT|^2) + eps), returned C-ordered (n_mels, T): the numbers of torchaudio's
    MelSpectrogram(power=2, center=True, reflect padding, periodic Hann window, HTK mel filters), within
    float32 rounding, at about half its cost on a short clip (tools/bench_write.py).

    Where the time went and what replaced it: torch.stft's own padding and framing (reflect-padded here into
    a reused buffer, framed as a view); the power as |x| squared, a square root per bin (re^2 + im^2 here);
    and the dense mel matrix product, 80 x 201 weights of which 392 are not zero (a sparse CSR product here).
    Not thread-safe (the padding buffer is reused): one LogMel per thread.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.window = torch.hann_window(config.n_fft)
        filters = torchaudio.functional.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1, f_min=config.f_min, f_max=config.f_max or config.sample_rate / 2,
            n_mels=config.n_mels, sample_rate=config.sample_rate)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
            warnings.simplefilter("ignore")
            self.filters = filters.t().contiguous().to_sparse_csr()  # (n_mels, n_freqs)
        self.padded = np.empty(0, dtype=np.float32)

    def __call__(self, audio: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """`audio`: mono float32 samples at config.sample_rate, more than n_fft // 2 of them.
        Returns (n_mels, 1 + len(audio) // hop_length) of `dtype`, row-major."""
        self.padded, padded = reflect_padded(audio, self.config.n_fft // 2, self.padded)
        return self.of_padded(padded, dtype)

    def of_padded(self, padded: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """The frames of samples already padded (a block of a long file, with its neighbours' samples or the
        file's reflection around it): (n_mels, 1 + (len(padded) - n_fft) // hop_length)."""
        config = self.config
        frames = torch.from_numpy(padded).unfold(0, config.n_fft, config.hop_length)
        with torch.inference_mode():
            spectrum = torch.view_as_real(torch.fft.rfft(frames * self.window)).square_()  # (T, F, 2)
            power = spectrum[..., 0].add_(spectrum[..., 1]).t().contiguous()  # (F, T)
            logmel = (self.filters @ power).add_(config.log_eps).log_()  # (n_mels, T)
            out = torch.empty(logmel.shape, dtype=getattr(torch, dtype))
            out.copy_(logmel)
        return out.numpy()


def reflect_padded(audio: np.ndarray, pad: int, buffer: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(buffer, `audio` with `pad` samples mirrored at each end), as torch.stft(center=True) pads; the buffer
    is reused across files and grown when a file needs more."""
    n = len(audio)
    if n <= pad:
        raise ValueError(f"{n} samples: a centred STFT of this n_fft needs more than {pad}")
    if len(buffer) < n + 2 * pad:
        buffer = np.empty(n + 2 * pad, dtype=np.float32)
    padded = buffer[: n + 2 * pad]
    padded[pad : pad + n] = audio
    padded[:pad] = audio[1 : pad + 1][::-1]
    padded[pad + n :] = audio[n - 1 - pad : n - 1][::-1]
    return buffer, padded
