"""The samples of a long recording, any range at a time: decoded by seeking, downmixed and resampled block by
block, so memory follows the block and not the file (a day at 48 kHz stereo is 33 GB of float32).

Every range equals the same range of read_audio()'s whole-file result: downmixing is per sample, and
resampling is torchaudio's (a sinc kernel applied with a stride, after zero padding): an output sample depends
only on the kernel's reach of input samples, so a block computed from its own input range plus that reach is the
same convolution (tested; within float32 rounding of the convolution's summation order).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import soundfile as sf
import torch

from ..errors import BadInput
from ..rules.frames import resampled_length
from .audio import int16_to_mono, is_exact_16bit, resampler_for


class BlockSource:
    """Mono float32 samples of an open sound file at `sample_rate`: samples(lo, hi) and padded(lo, hi)."""

    def __init__(self, sound: sf.SoundFile, sample_rate: int, name: str) -> None:
        self.sound, self.name = sound, name
        self.length, self.orig_rate = int(sound.frames), int(sound.samplerate)
        self.subtype, self.channels = str(sound.subtype), int(sound.channels)
        self.samples_count = resampled_length(self.length, self.orig_rate, sample_rate)
        self.exact_16bit = is_exact_16bit(self.subtype, self.channels, self.orig_rate, sample_rate)
        self.kernel: Optional[torch.Tensor] = None
        if self.orig_rate != sample_rate:
            resampler = resampler_for(self.orig_rate, sample_rate)
            self.kernel, self.width = resampler.kernel, int(resampler.width)
            self.orig_step, self.new_step = self.orig_rate // resampler.gcd, sample_rate // resampler.gcd

    def original(self, lo: int, hi: int) -> np.ndarray:
        """Mono samples [lo, hi) at the file's own rate, zeros outside the file (as the resampler pads)."""
        a, b = max(lo, 0), min(hi, self.length)
        out = np.zeros(hi - lo, dtype=np.float32)
        if a >= b:
            return out
        try:
            self.sound.seek(a)
            data = self.sound.read(b - a, dtype="int16" if self.subtype == "PCM_16" else "float32", always_2d=True)
        except Exception as exc:  # libsndfile's errors have several types
            raise BadInput(self.name, f"corrupt or unreadable audio at sample {a}: {exc}") from None
        if len(data) != b - a:
            raise BadInput(self.name, f"audio ends at sample {a + len(data)}, before the {self.length} its header says")
        if data.dtype == np.int16:
            mono = int16_to_mono(data)
        else:
            mono = data.mean(axis=1, dtype=np.float32) if self.channels > 1 else data[:, 0]
            if not np.isfinite(mono).all():
                raise BadInput(self.name, "audio contains NaN or infinite samples")
        out[a - lo : b - lo] = mono
        return out

    def samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) at the target rate, 0 <= lo <= hi <= samples_count."""
        if self.kernel is None or hi <= lo:
            return self.original(lo, max(hi, lo))
        first, last = lo // self.new_step, -(-hi // self.new_step)  # kernel applications (output groups)
        source = self.original(first * self.orig_step - self.width, last * self.orig_step + self.width)
        with torch.inference_mode():
            groups = torch.nn.functional.conv1d(torch.from_numpy(source)[None, None], self.kernel, stride=self.orig_step)
            flat = groups[0].t().reshape(-1)  # output sample j * new_step + phase
        offset = first * self.new_step
        return flat[lo - offset : hi - offset].numpy()

    def padded(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) where positions outside the file are its reflection (x[-i] = x[i], as a centred
        STFT pads); `lo` may be negative and `hi` past the end by less than the file's length."""
        n = self.samples_count
        parts = []
        if lo < 0:
            parts.append(self.samples(1, 1 - lo)[::-1])
        parts.append(self.samples(max(lo, 0), min(hi, n)))
        if hi > n:
            parts.append(self.samples(2 * n - 1 - hi, n - 1)[::-1])
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def frames_padded(self, first: int, last: int, n_fft: int, hop_length: int) -> np.ndarray:
        """The samples a centred STFT reads for frames [first, last): frame t covers n_fft samples centred on
        sample t * hop_length, the file reflected at its ends."""
        return self.padded(first * hop_length - n_fft // 2, (last - 1) * hop_length - n_fft // 2 + n_fft)
