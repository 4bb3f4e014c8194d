"""The WAV fast path gives exactly what libsndfile gives, or stands aside.

Every file here is read both ways: the fast path either returns libsndfile's samples and header, or returns
None (and the writer asks libsndfile). Hand-built files cover what real WAVs carry: extra chunks, odd chunk
sizes, the extensible format, other sample formats, truncated and damaged headers.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from spgdataset.write import audio
from spgdataset.write.wav import probe_wav, read_wav

RATE = 16000


def chunk(name: bytes, body: bytes, size: int = -1) -> bytes:
    size = len(body) if size < 0 else size
    return name + struct.pack("<I", size) + body + (b"\0" if len(body) % 2 else b"")


def fmt_body(channels: int = 1, bits: int = 16, tag: int = 1, rate: int = RATE, align: int = -1) -> bytes:
    align = channels * bits // 8 if align < 0 else align
    return struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)


def riff(*chunks: bytes, form: bytes = b"RIFF") -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return form + struct.pack("<I", len(body)) + body


def samples(frames: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32768, size=(frames, channels), dtype=np.int16)


def hand_built(tmp_path):
    """name -> path of WAVs built byte by byte: plain ones the fast path reads, and ones it must leave alone."""
    mono, stereo = samples(1000, 1), samples(999, 2, seed=1)
    extensible = fmt_body(2) + struct.pack("<HHI", 22, 16, 3) + struct.pack("<H", 1) + bytes.fromhex(
        "000000001000800000aa00389b71")
    files = {
        "mono": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes())),
        "stereo": riff(chunk(b"fmt ", fmt_body(2)), chunk(b"data", stereo.tobytes())),
        "odd-chunk-first": riff(chunk(b"fmt ", fmt_body()), chunk(b"junk", b"xyz"), chunk(b"data", mono.tobytes())),
        "chunks-after-data": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes()),
                                  chunk(b"LIST", b"INFOISFT\x04\x00\x00\x00test")),
        "extensible": riff(chunk(b"fmt ", extensible), chunk(b"data", stereo.tobytes())),
        "fmt-18-bytes": riff(chunk(b"fmt ", fmt_body() + b"\0\0"), chunk(b"data", mono.tobytes())),
        # left to libsndfile:
        "8-bit": riff(chunk(b"fmt ", fmt_body(bits=8)), chunk(b"data", bytes(range(256)) * 4)),
        "float": riff(chunk(b"fmt ", fmt_body(bits=32, tag=3)), chunk(b"data", np.zeros(100, "<f4").tobytes())),
        "bad-align": riff(chunk(b"fmt ", fmt_body(align=4)), chunk(b"data", mono.tobytes())),
        "data-longer-than-file": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes(), size=4000)),
        "half-a-frame": riff(chunk(b"fmt ", fmt_body(2)), chunk(b"data", stereo.tobytes()[:-2])),
        "data-before-fmt": riff(chunk(b"data", mono.tobytes()), chunk(b"fmt ", fmt_body())),
        "big-chunk-first": riff(chunk(b"fmt ", fmt_body()), chunk(b"LIST", b"x" * 5000), chunk(b"data", mono.tobytes())),
        "rifx": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes()), form=b"RIFX"),
        "short-fmt": riff(chunk(b"fmt ", fmt_body()[:12]), chunk(b"data", mono.tobytes())),
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.wav"
        paths[name].write_bytes(data)
    return paths


PLAIN = {"mono", "stereo", "odd-chunk-first", "chunks-after-data", "extensible", "fmt-18-bytes"}


def libsndfile(path):
    """(int16 samples, rate) as libsndfile reads them, or None when it refuses the file."""
    try:
        data, rate = sf.read(str(path), dtype="int16", always_2d=True)
    except Exception:
        return None
    return data, rate


def test_plain_wavs_read_as_libsndfile_reads_them_and_others_are_left_to_it(tmp_path):
    for name, path in hand_built(tmp_path).items():
        fast, expected = read_wav(str(path)), libsndfile(path)
        if name in PLAIN:
            assert fast is not None, name
            assert expected is not None and fast[1] == expected[1], name
            assert fast[0].dtype == np.int16 and np.array_equal(fast[0], expected[0]), name
            assert probe_wav(str(path)) == (len(expected[0]), expected[1]), name
        else:
            assert fast is None and probe_wav(str(path)) is None, name


def test_soundfile_wavs_of_every_layout_match(tmp_path):
    for channels in (1, 2, 3):
        for fmt in ("WAV", "WAVEX"):
            path = tmp_path / f"{channels}-{fmt}.wav"
            sf.write(str(path), samples(RATE // 3, channels, seed=channels), RATE, format=fmt, subtype="PCM_16")
            data, rate = read_wav(str(path))
            expected = libsndfile(path)
            assert rate == expected[1] and np.array_equal(data, expected[0]), (channels, fmt)


def test_the_writer_decodes_plain_wavs_without_libsndfile_and_the_rest_with_it(tmp_path, monkeypatch):
    paths = hand_built(tmp_path)
    expected = {name: audio.read_audio(str(paths[name]), RATE) for name in ("mono", "8-bit", "data-longer-than-file")}

    def refuse(*args, **kwargs):
        raise AssertionError("libsndfile opened a plain WAV")

    monkeypatch.setattr(audio.sf, "SoundFile", refuse)
    got = audio.read_audio(str(paths["mono"]), RATE)
    assert np.array_equal(got[0], expected["mono"][0]) and got[1:] == expected["mono"][1:]
    assert audio.probe(str(paths["mono"])) == (1000, RATE)
    with pytest.raises(audio.BadInput, match="libsndfile opened"):  # the others still go to libsndfile
        audio.read_audio(str(paths["8-bit"]), RATE)
    monkeypatch.undo()
    truncated = expected["data-longer-than-file"]  # what libsndfile makes of a chunk longer than the file
    assert len(truncated[0]) == 1000 and truncated[2] == 1000


def test_a_damaged_wav_still_gets_libsndfiles_message(tmp_path):
    path = tmp_path / "damaged.wav"
    path.write_bytes(riff(chunk(b"fmt ", fmt_body()[:12]), chunk(b"data", b"\0" * 100)))
    with pytest.raises(audio.BadInput, match="damaged.wav.*(corrupt or unreadable audio|unreadable audio)"):
        audio.read_audio(str(path), RATE, "damaged.wav")
    with pytest.raises(audio.BadInput, match="unreadable audio"):
        audio.probe(str(path), "damaged.wav")
