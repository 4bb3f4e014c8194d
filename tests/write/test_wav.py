"""The WAV fast path gives exactly what libsndfile gives, or stands aside.

Every file here is read both ways: the fast path either returns libsndfile's samples and header, or returns
None (and the writer asks libsndfile). Hand-built files cover what real WAVs carry: extra chunks, odd chunk
sizes, the extensible format, other sample formats, truncated and damaged headers.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import soundfile as sf

from spgdataset import write_shards
from spgdataset.format.codec import pack
from spgdataset.storage.folder import LocalStorage
from spgdataset.write import audio
from spgdataset.write.headers import HEADERS_NAME, HeaderCache
from spgdataset.write.wav import probe_wav, read_wav
from tests.helpers import index_rows, report

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
        "zero-padding-after-data": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes())) + bytes(512),
        "two-data-chunks": riff(chunk(b"fmt ", fmt_body()), *[chunk(b"data", mono.tobytes())] * 2),
        "two-files-end-to-end": riff(chunk(b"fmt ", fmt_body()), chunk(b"data", mono.tobytes())) * 2,
        "2000-channels": riff(chunk(b"fmt ", fmt_body(2000)), chunk(b"data", samples(10, 2000).tobytes())),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.wav"
        paths[name].write_bytes(data)
    return paths


PLAIN = {"mono", "stereo", "odd-chunk-first", "chunks-after-data", "extensible", "fmt-18-bytes",
         "zero-padding-after-data"}


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


@pytest.mark.parametrize("name, tail, message", [
    ("adjacent", lambda data: chunk(b"data", data), "SF_INFO struct incomplete"),
    ("after-a-list", lambda data: chunk(b"LIST", b"INFOISFT\x04\x00\x00\x00test") + chunk(b"data", data),
     "SF_INFO struct incomplete"),
    ("after-an-odd-chunk", lambda data: chunk(b"abcd", b"xyz") + chunk(b"data", data), "SF_INFO struct incomplete"),
    ("a-second-file", lambda data: riff(chunk(b"fmt ", fmt_body()), chunk(b"data", data)), "No 'RIFF' chunk marker"),
])
def test_a_second_data_chunk_is_refused_as_libsndfile_refuses_it(tmp_path, name, tail, message):
    data = samples(1000, 1).tobytes()
    path = tmp_path / f"{name}.wav"
    first = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", data))
    path.write_bytes(first[:4] + struct.pack("<I", len(first) - 8 + len(tail(data))) + first[8:] + tail(data))
    assert read_wav(str(path)) is None and probe_wav(str(path)) is None
    assert libsndfile(path) is None
    with pytest.raises(audio.BadInput, match=f"{name}.wav: corrupt or unreadable audio: .*{message}"):
        audio.read_audio(str(path), RATE, f"{name}.wav")
    with pytest.raises(audio.BadInput, match=f"{name}.wav: unreadable audio: .*{message}"):
        audio.probe(str(path), f"{name}.wav")


def test_more_channels_than_libsndfile_takes_are_refused_too(tmp_path):
    for channels in (1024, 1025, 2000):
        path = tmp_path / f"{channels}.wav"
        path.write_bytes(riff(chunk(b"fmt ", fmt_body(channels)), chunk(b"data", samples(10, channels).tobytes())))
        expected = libsndfile(path)
        if channels <= 1024:  # libsndfile's limit: the fast path still reads these, and the same
            fast = read_wav(str(path))
            assert expected is not None and fast is not None and np.array_equal(fast[0], expected[0])
            continue
        assert expected is None and read_wav(str(path)) is None and probe_wav(str(path)) is None
        with pytest.raises(audio.BadInput, match=f"{channels}.wav: unreadable audio: Too many channels specified"):
            audio.probe(str(path), f"{channels}.wav")


def test_a_walk_past_the_data_chunk_is_bounded(tmp_path):
    """A file of many small chunks after its data goes to libsndfile rather than costing a seek per chunk."""
    data = samples(1000, 1).tobytes()
    many = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", data), *[chunk(b"junk", b"ab")] * 100)
    (tmp_path / "many.wav").write_bytes(many)
    assert read_wav(str(tmp_path / "many.wav")) is None
    assert np.array_equal(libsndfile(tmp_path / "many.wav")[0], samples(1000, 1))


def truncated(tmp_path, name, declared_bytes, present, tag=1, bits=16):
    """A WAV whose data chunk says `declared_bytes` and holds the bytes of `present` (an interrupted copy)."""
    path = tmp_path / name
    path.write_bytes(riff(chunk(b"fmt ", fmt_body(bits=bits, tag=tag)), chunk(b"data", present.tobytes(),
                                                                                size=declared_bytes)))
    return path


def test_a_wav_shorter_than_its_header_is_reported_and_stored_as_read(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    noise = np.random.default_rng(5).normal(0, 0.1, 10 * RATE).astype(np.float32)
    truncated(root, "short.wav", 2 * 40000, (noise[:RATE] * 32767).astype("<i2"))  # 2.5 s promised, 1 s there
    truncated(root, "day.wav", 2 * 86400 * RATE, (noise * 32767).astype("<i2"))  # a day promised, 10 s there
    truncated(root, "float.wav", 4 * 20000, noise[:8000].astype("<f4"), tag=3, bits=32)  # libsndfile's own path
    truncated(root, "streaming.wav", 0xFFFFFFFF, (noise[:RATE] * 32767).astype("<i2"))  # length left unknown
    result = write_shards(root, None, tmp_path / "out", workers=1, progress=False)
    expected = {
        "short.wav": "header says 40000 samples (2.50 s), the file holds 16000 (1.00 s); stored as read",
        "day.wav": "header says 1382400000 samples (86400.00 s), the file holds 160000 (10.00 s); stored as read",
        "float.wav": "header says 20000 samples (1.25 s), the file holds 8000 (0.50 s); stored as read"}
    assert {path: (row["kind"], row["problem"]) for path, row in report(result).items()} == {
        path: ("warning", problem) for path, problem in expected.items()}
    rows = {row["path"]: row for row in index_rows(tmp_path / "out")}
    assert {path: row["samples"] for path, row in rows.items()} == {
        "short.wav": RATE, "day.wav": 10 * RATE, "float.wav": 8000, "streaming.wav": RATE}
    assert rows["day.wav"]["frames"] == 1 + 10 * RATE // 160 and "offset" not in rows["day.wav"]  # 10 s: no segments
    again = write_shards(root, None, tmp_path / "out", workers=1, progress=False)
    assert again.headers_read == 0 and report(again) == report(result)  # the header cache keeps what was declared
    short, streaming = audio.probe(str(root / "short.wav")), audio.probe(str(root / "streaming.wav"))
    assert short == (RATE, RATE) and short.declared == 40000 and streaming.declared is None
    assert pickle.loads(pickle.dumps(short)).declared == 40000  # as it travels back from a worker process


def test_a_header_cache_without_declared_lengths_is_read_again(tmp_path):
    """A cache written before headers carried their declared length would hide a short file's warning."""
    path = truncated(tmp_path, "short.wav", 2 * 40000, samples(RATE, 1))
    stat = path.stat()

    def column(value: int) -> bytes:
        return np.asarray([value], dtype="<i8").tobytes()

    (tmp_path / ".spg-state").mkdir()
    (tmp_path / HEADERS_NAME).write_bytes(pack({
        "version": 1, "paths": ["short.wav"], "size": column(stat.st_size), "mtime": column(stat.st_mtime_ns),
        "samples": column(RATE), "rate": column(RATE), "problems": {}}))
    cache = HeaderCache.load(LocalStorage(str(tmp_path)))
    assert cache.lookup("short.wav", (stat.st_size, stat.st_mtime_ns)) is None
