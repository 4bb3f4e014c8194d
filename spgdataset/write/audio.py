"""Audio in: any libsndfile format, probed from its header or decoded to mono at a target rate."""

from __future__ import annotations

import re
from typing import Callable, Optional, Tuple, TypeVar

import numpy as np
import soundfile as sf

from ..errors import BadInput
from ..storage.local import check_regular
from .resample import resampler_for
from .wav import declared_frames, probe_wav, read_wav

# Subtypes whose samples a 16-bit FLAC holds exactly.
EXACT_16BIT = {"PCM_16", "PCM_S8", "PCM_U8"}
# Below this a header is damaged rather than a recording: resampling 80 samples "at 1 Hz" to 16 kHz makes
# a 600 MiB shard.
MIN_SAMPLE_RATE = 1000
# Above this a header is damaged or hostile rather than a recording: bats are recorded at 250-500 kHz and some
# ultrasound at 1-2 MHz, so 10 MHz leaves room; a second of audio costs ~12 x the rate in filter taps to resample.
MAX_SAMPLE_RATE = 10_000_000
_T = TypeVar("_T")


class AudioHeader(tuple):
    """(samples per channel, sample rate), as probe() returns, with `declared`: the samples the header promises
    when the file holds fewer (an interrupted copy or recording), else None. A tuple, so `frames, rate = ...`
    and comparisons with (frames, rate) stay as they were."""

    declared: Optional[int]

    def __new__(cls, frames: int, rate: int, declared: Optional[int] = None) -> "AudioHeader":
        header = super().__new__(cls, (frames, rate))
        header.declared = declared if declared is not None and declared > frames else None
        return header

    def __reduce__(self) -> Tuple[type, Tuple[int, int, Optional[int]]]:  # travels back from workers with `declared`
        return (AudioHeader, (self[0], self[1], self.declared))


def probe(path: str, name: Optional[str] = None) -> AudioHeader:
    """(samples per channel, sample rate) from the header, without decoding the audio; `declared` when a WAV's
    header promises more samples than the file holds (libsndfile reads what is there).

    `name` is how messages call the file (its path in metadata.json); defaults to `path`.
    """
    name = name or path
    check_audio_file(path, name)
    header = _plain_wav(probe_wav, path)  # a plain WAV the fast path takes holds its whole data chunk
    if header is not None:
        check_rate(header[1], name)
        return AudioHeader(*header)
    try:
        with sf.SoundFile(path) as f:  # not sf.info, which formats strings nobody reads here (a third of its cost)
            frames, rate, wav = int(f.frames), int(f.samplerate), f.format in ("WAV", "WAVEX")
    except Exception as exc:  # libsndfile says RuntimeError / LibsndfileError, depending on version
        raise BadInput(name, f"unreadable audio: {_one_line(exc)}") from None
    check_rate(rate, name)
    return AudioHeader(frames, rate, _declared(path) if wav else None)


def _declared(path: str) -> Optional[int]:
    try:
        return declared_frames(path)
    except OSError:
        return None


def check_audio_file(path: str, name: str) -> None:
    """Only regular files are audio: a FIFO would block the decoder forever, a device never ends."""
    try:
        check_regular(path)
    except FileNotFoundError:
        raise BadInput(name, "file not found") from None
    except OSError as exc:
        raise BadInput(name, exc.strerror or str(exc)) from None


def check_rate(rate: int, name: str) -> None:
    """A header's rate is checked before anything is sized by it: decoding, resampling, planning."""
    if rate < MIN_SAMPLE_RATE:
        raise BadInput(name, f"sample rate {rate} Hz is below {MIN_SAMPLE_RATE} Hz (a damaged header?)")
    if rate > MAX_SAMPLE_RATE:
        raise BadInput(name, f"sample rate {rate} Hz is above {MAX_SAMPLE_RATE} Hz (a damaged header?)")


def read_audio(path: str, sample_rate: int, name: Optional[str] = None) -> Tuple[np.ndarray, int, int, bool]:
    """Decode `path`, downmix to mono, resample to `sample_rate`.

    Returns (float32 samples, original rate, original length in samples, exact_16bit): exact_16bit says the
    samples are the file's own 16-bit (or narrower) values, untouched by downmix or resampling.
    """
    path, name = str(path), name or str(path)
    check_audio_file(path, name)
    wav = _plain_wav(read_wav, path)
    if wav is not None:
        (data, orig_rate), subtype = wav, "PCM_16"
        check_rate(orig_rate, name)
    else:
        data, orig_rate, subtype = _decode(path, name)
    length, channels = data.shape
    if length == 0:
        raise BadInput(name, "audio is empty (0 samples)")
    if data.dtype == np.int16:
        mono = int16_to_mono(data)
    else:
        mono = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
        if not np.isfinite(mono).all():
            raise BadInput(name, "audio contains NaN or infinite samples")
    if orig_rate != sample_rate:
        mono = resampler_for(orig_rate, sample_rate).whole(mono)
    return np.ascontiguousarray(mono, dtype=np.float32), orig_rate, length, \
        is_exact_16bit(subtype, channels, orig_rate, sample_rate)


def is_exact_16bit(subtype: str, channels: int, orig_rate: int, sample_rate: int) -> bool:
    """Whether the audio at `sample_rate` is the file's own 16-bit (or narrower) samples, untouched by downmix
    or resampling: a 16-bit FLAC then stores it exactly."""
    return subtype in EXACT_16BIT and channels == 1 and orig_rate == sample_rate


def _plain_wav(reader: Callable[[str], Optional[_T]], path: str) -> Optional[_T]:
    """What the WAV fast path (wav.py) makes of a file named *.wav; None for other names, for files it leaves to
    libsndfile, and when it cannot read the file (libsndfile then tries, and says what is wrong)."""
    if not path.lower().endswith((".wav", ".wave")):
        return None
    try:
        return reader(path)
    except OSError:
        return None


def _decode(path: str, name: str) -> Tuple[np.ndarray, int, str]:
    """(samples (frames, channels), rate, subtype) through libsndfile: 16-bit PCM as int16, the rest float32."""
    try:
        with sf.SoundFile(path) as f:
            orig_rate, subtype = int(f.samplerate), str(f.subtype)
            check_rate(orig_rate, name)
            return f.read(dtype="int16" if subtype == "PCM_16" else "float32", always_2d=True), orig_rate, subtype
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(name, f"corrupt or unreadable audio: {_one_line(exc)}") from None


def int16_to_mono(data: np.ndarray) -> np.ndarray:
    """The float32 samples libsndfile would give (value / 32768), averaged over channels, without a float
    copy of every channel: decoding 16-bit PCM as float took twice as long as reading it (tools/bench_write.py).
    Equal to reading float32 and taking the mean: the scaled sums are exact, the division is the same."""
    scale = np.float32(1 / 32768)
    if data.shape[1] == 1:
        return np.multiply(data[:, 0], scale, dtype=np.float32)
    mono = np.multiply(data.sum(axis=1, dtype=np.int32), scale, dtype=np.float32)
    mono /= np.float32(data.shape[1])
    return mono


def _one_line(exc: BaseException) -> str:
    """libsndfile's message without its "Error opening '<path>': " prefix (the caller names the file)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return re.sub(r"^Error opening .*?: ", "", text)
