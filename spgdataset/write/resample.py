"""The one resampling rule: torchaudio's windowed sinc (sinc_interp_hann, lowpass_filter_width 6, rolloff 0.99),
in memory that follows the block and not the rates.

torchaudio builds one kernel row per output phase, each spanning a whole input period: new_step x (2 width +
orig_step) values in float64, where the steps are the rates over their gcd. For 44100 -> 16000 (441:160) that
is 76,000 values; for 44101 -> 16000 (coprime) it is 706 million (5.6 GB), and 2,000,003 Hz asks for 256 GB.
So torchaudio's own Resample runs while its kernel is small (KERNEL_LIMIT): every rate pair in use today keeps
its bytes. Above that the same function is evaluated directly, a block of outputs at a time: output m sums
f(i / orig - m / new) x[i] over the 2 width + 1 inputs i around m orig / new (the only nonzero taps), with the
kernel values computed by torchaudio's own float64 operations (its phase -p / new even passes through float32,
as there) and cast to float32. The two paths differ only in summation order (tests/write/test_resample.py).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torchaudio

from ..rules.frames import resampled_length

LOWPASS_WIDTH, ROLLOFF = 6, 0.99  # torchaudio's defaults
KERNEL_LIMIT = 2**22  # torchaudio's kernel up to this many values (32 MB float64; 44100 -> 16000 has 76,000)
BLOCK_TAPS = 2**16  # outputs x taps per block of the direct path: float64 temporaries of 512 KB (fastest here)
Reader = Callable[[int, int], np.ndarray]  # input samples [a, b) as float32, zeros outside the signal


class Resampler:
    """Resampling from `orig_rate` to `new_rate`: a whole signal (`whole`), or any range of its outputs read
    from any range of its inputs (`span`, `outputs`). `direct` forces a path (tests); by default torchaudio's
    kernel is used while it has at most KERNEL_LIMIT values."""

    def __init__(self, orig_rate: int, new_rate: int, direct: Optional[bool] = None) -> None:
        if orig_rate == new_rate:  # torchaudio's Resample returns the samples then; callers take them as they are
            raise ValueError(f"resampling from {orig_rate} Hz to itself")
        gcd = math.gcd(orig_rate, new_rate)
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self.orig_step, self.new_step = orig_rate // gcd, new_rate // gcd
        self.base_freq = min(self.orig_step, self.new_step) * ROLLOFF
        self.width = math.ceil(LOWPASS_WIDTH * self.orig_step / self.base_freq)
        self.taps = 2 * self.width + 1
        self.kernel_size = self.new_step * (2 * self.width + self.orig_step)
        self.direct = self.kernel_size > KERNEL_LIMIT if direct is None else direct
        self.module: Optional[torchaudio.transforms.Resample] = None
        if not self.direct:
            self.module = torchaudio.transforms.Resample(orig_rate, new_rate)
            assert int(self.module.width) == self.width, (orig_rate, new_rate)

    def length(self, samples: int) -> int:
        """Outputs of a signal of `samples` inputs: ceil(samples * new / orig)."""
        return resampled_length(samples, self.orig_rate, self.new_rate)

    def whole(self, signal: np.ndarray) -> np.ndarray:
        """`signal` (float32, 1-D) resampled: torchaudio's Resample itself, or the direct path."""
        if self.module is not None:
            with torch.inference_mode():
                return self.module(torch.from_numpy(np.ascontiguousarray(signal))).numpy()
        return self.outputs(lambda a, b: _window(signal, a, b), 0, self.length(len(signal)))

    def span(self, lo: int, hi: int) -> Tuple[int, int]:
        """Inputs [a, b) that outputs [lo, hi) read (lo < hi); they may reach outside the signal."""
        if self.direct:
            return self._first_tap(lo), self._first_tap(hi - 1) + self.taps
        first, last = lo // self.new_step, -(-hi // self.new_step)  # torchaudio's kernel applications
        return first * self.orig_step - self.width, last * self.orig_step + self.width

    def outputs(self, read: Reader, lo: int, hi: int) -> np.ndarray:
        """Outputs [lo, hi) (float32), their inputs taken from `read`: one read of span(lo, hi) for torchaudio's
        kernel (as its whole-signal convolution), a block of BLOCK_TAPS at a time for the direct path."""
        if hi <= lo:
            return np.zeros(0, dtype=np.float32)
        if self.module is None:
            return self._direct(read, lo, hi)
        a, b = self.span(lo, hi)
        with torch.inference_mode():
            groups = torch.nn.functional.conv1d(torch.from_numpy(read(a, b))[None, None], self.module.kernel,
                                                stride=self.orig_step)
            flat = groups[0].t().reshape(-1)  # output g * new_step + phase
        offset = lo // self.new_step * self.new_step
        return flat[lo - offset : hi - offset].numpy()

    def _first_tap(self, m: int) -> int:
        return m * self.orig_step // self.new_step - self.width

    def _direct(self, read: Reader, lo: int, hi: int) -> np.ndarray:
        out = np.empty(hi - lo, dtype=np.float32)
        block = max(1, BLOCK_TAPS // self.taps)
        taps = torch.arange(self.taps)
        with torch.inference_mode():
            for m0 in range(lo, hi, block):
                m1 = min(hi, m0 + block)
                a, b = self.span(m0, m1)
                source = torch.from_numpy(read(a, b)).double()
                m = torch.arange(m0, m1)
                kernel, first = self.kernel_rows(m)
                inputs = source[(first - a)[:, None] + taps]
                out[m0 - lo : m1 - lo] = (kernel.double() * inputs).sum(1).float().numpy()
        return out

    def kernel_rows(self, m: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(float32 kernel values (len(m), taps), first input index) of outputs m: output m is the sum over k of
        kernel[., k] x[first + k]. Torchaudio's operations in its order, so the values are its kernel's."""
        phase = m % self.new_step
        first = (m - phase) // self.new_step * self.orig_step + phase * self.orig_step // self.new_step - self.width
        offset = first - (m - phase) // self.new_step * self.orig_step  # within torchaudio's row: -width..
        index = (offset[:, None] + torch.arange(self.taps)).double() / self.orig_step
        t = (-phase) / self.new_step  # int64 / int: float32, as torchaudio's arange(0, -new, -1) / new
        t = t[:, None] + index
        t *= self.base_freq
        t = t.clamp_(-LOWPASS_WIDTH, LOWPASS_WIDTH)
        window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2
        t *= math.pi
        kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
        kernel *= window * (self.base_freq / self.orig_step)
        return kernel.to(torch.float32), first


def _window(signal: np.ndarray, a: int, b: int) -> np.ndarray:
    """signal[a:b] as float32 with zeros where [a, b) reaches outside it."""
    if 0 <= a and b <= len(signal):
        return np.asarray(signal[a:b], dtype=np.float32)
    out = np.zeros(b - a, dtype=np.float32)
    lo, hi = max(a, 0), min(b, len(signal))
    if lo < hi:
        out[lo - a : hi - a] = signal[lo:hi]
    return out


@lru_cache(maxsize=16)
def resampler_for(orig_rate: int, new_rate: int) -> Resampler:
    """Resamplers are worth keeping: torchaudio's kernel is built once per rate pair, and a corpus has few."""
    return Resampler(orig_rate, new_rate)
