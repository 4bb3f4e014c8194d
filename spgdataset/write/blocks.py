"""The samples of a long recording, any range at a time: decoded by seeking, downmixed and resampled block by
block, so memory follows the block and not the file (a day at 48 kHz stereo is 33 GB of float32).

Every range equals the same range of read_audio()'s whole-file result: downmixing is per sample, and
resampling is resample.py's (a sinc kernel over zero-padded input): an output sample depends only on the kernel's
reach of input samples, so a block computed from its own input range plus that reach is the same sum (tested;
with torchaudio's kernel, within float32 rounding of the convolution's summation order; on the direct path,
which reads its inputs a bounded block at a time whatever the rates, equal).

A short file is decoded whole instead (DecodedSource): the writer then takes its frames from the same
interface, so one featurising path serves both.
"""

from __future__ import annotations

import abc
from typing import Optional

import numpy as np
import soundfile as sf

from ..errors import BadInput
from .audio import check_rate, int16_to_mono, is_exact_16bit
from .resample import Resampler, resampler_for


class Source(abc.ABC):
    """Mono float32 samples of one file at the target rate, any range at a time: what the writer featurises frames
    from (write/featurize.py), whether the file was decoded whole or is read by ranges."""

    name: str  # how messages call the file
    length: int  # samples per channel at the file's own rate
    orig_rate: int
    exact_16bit: bool  # the samples are the file's own 16-bit values: a 16-bit FLAC holds them exactly
    samples_count: int  # at the target rate

    @abc.abstractmethod
    def samples(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) at the target rate, 0 <= lo <= hi <= samples_count."""

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


class DecodedSource(Source):
    """A file decoded whole (audio.read_audio(): a short one): its ranges are views of the array."""

    def __init__(self, audio: np.ndarray, orig_rate: int, length: int, exact_16bit: bool, name: str) -> None:
        self.audio, self.name = audio, name
        self.orig_rate, self.length, self.exact_16bit = orig_rate, length, exact_16bit
        self.samples_count = len(audio)

    def samples(self, lo: int, hi: int) -> np.ndarray:
        return self.audio[lo:hi]


class BlockSource(Source):
    """An open sound file read by ranges: decoded by seeking, then downmixed and resampled range by range."""

    def __init__(self, sound: sf.SoundFile, sample_rate: int, name: str) -> None:
        self.sound, self.name = sound, name
        self.length, self.orig_rate = int(sound.frames), int(sound.samplerate)
        self.subtype, self.channels = str(sound.subtype), int(sound.channels)
        check_rate(self.orig_rate, name)
        self.exact_16bit = is_exact_16bit(self.subtype, self.channels, self.orig_rate, sample_rate)
        self.resampler: Optional[Resampler] = None
        self.samples_count = self.length
        if self.orig_rate != sample_rate:
            self.resampler = resampler_for(self.orig_rate, sample_rate)
            self.samples_count = self.resampler.length(self.length)

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
        """Decoded from the file's own range and resampled (the resampler reads what its kernel reaches)."""
        if self.resampler is None or hi <= lo:
            return self.original(lo, max(hi, lo))
        return self.resampler.outputs(self.original, lo, hi)
