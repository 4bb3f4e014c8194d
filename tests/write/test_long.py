"""Long recordings are featurised in blocks (featurize_long): the same shard bytes as the whole-file path.

Blocks are made small here (tens to hundreds of frames) so that short files straddle many block edges: lengths
just under, at and over a block, the file's first and last frames (reflection), resampling up and down, stereo,
float and 16-bit sources, the FLAC audio, vak's log_spect (which needs the file's peak before any block) and
vak's band-pass (a filter whose state runs from the file's first sample).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from spgdataset import FeatureConfig, write_shards
from spgdataset.format.codec import decode_flac, npy_view
from spgdataset.format.tar import tar_end, tar_members
from spgdataset.write import featurize as featurize_module
from spgdataset.write.featurize import featurize, featurize_long
from spgdataset.write.inputs import FileEntry
from spgdataset.write.plan import PlannedFile
from tests.helpers import report

LOGMEL = FeatureConfig()
LINEAR = FeatureConfig(kind="linear", transform_type="log_spect", thresh=6.25, n_fft=512, hop_length=64)
BANDPASS = FeatureConfig(kind="linear", transform_type="log_spect", thresh=6.25, n_fft=512, hop_length=64,
                         f_min=500.0, f_max=6000.0, bandpass=True)  # the filter's state carried across blocks


def planned(path) -> PlannedFile:
    info = sf.info(str(path))
    return PlannedFile(0, FileEntry("x.wav", str(path)), 0, info.frames / info.samplerate)


def members(result) -> dict:
    data = b"".join(bytes(piece) for piece in result.members)
    return {m["fname"].split(".", 1)[1]: bytes(m["data"]) for m in tar_members(data + tar_end(len(data)), "x")}


def source(tmp_path, name, seconds, rate, channels, subtype, seed=0):
    audio = np.random.default_rng(seed).normal(0, 0.1, (int(seconds * rate), channels)).astype(np.float32)
    path = tmp_path / name
    sf.write(str(path), audio, rate, subtype=subtype)
    return path


@pytest.mark.parametrize("frames_offset", [-1, 0, 1])
def test_blocks_at_the_target_rate_give_the_same_bytes(tmp_path, frames_offset):
    path = source(tmp_path, "a.wav", 3.0 + 37 / 16000, 16000, 1, "PCM_16")
    frames = 1 + sf.info(str(path)).frames // 160  # 301
    block = frames // 3 + frames_offset  # the last block just under, at or over a whole block
    for features in (LOGMEL, LINEAR, BANDPASS):
        whole = featurize(planned(path), features, with_audio=True)
        long = featurize_long(planned(path), features, with_audio=True, block_frames=block)
        assert members(long) == members(whole), (features.kind, block)
        assert long.index == whole.index and long.seconds == whole.seconds
        assert np.array_equal(long.sum, whole.sum)  # float16 values sum exactly in float64
        np.testing.assert_allclose(long.sumsq, whole.sumsq, rtol=1e-13)  # squares do not: summed in blocks


@pytest.mark.parametrize("name, rate, channels, subtype", [("b.wav", 44100, 2, "FLOAT"), ("c.flac", 48000, 1, "PCM_16"),
                                                         ("d.wav", 8000, 3, "PCM_24"), ("e.wav", 22050, 2, "PCM_16")])
def test_resampled_blocks_are_within_the_storage_precision(tmp_path, name, rate, channels, subtype):
    path = source(tmp_path, name, 2.5, rate, channels, subtype, seed=rate)
    whole = members(featurize(planned(path), LOGMEL, with_audio=True))
    for block in (1, 97, 250, 251, 400):
        long = members(featurize_long(planned(path), LOGMEL, with_audio=True, block_frames=block))
        assert long["info.msgpack"] == whole["info.msgpack"]
        a, b = npy_view(whole["spec.npy"]), npy_view(long["spec.npy"])
        assert a.shape == b.shape and a.dtype == b.dtype
        # the resampler's convolution sums in another order over another length: a stored value may move by
        # one float16 step (2**-10 relative), an audio sample by one 24-bit step
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=2**-10, atol=2**-14)
        np.testing.assert_allclose(decode_flac(long["audio.flac"]), decode_flac(whole["audio.flac"]), rtol=0,
                                   atol=2**-22)


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy: the header still counts every sample


def test_long_files_that_break_midway_are_reported_and_the_shards_equal_the_whole_path(tmp_path, monkeypatch):
    root = tmp_path / "audio"
    root.mkdir()
    for name in ("a.wav", "c.wav"):
        source(root, name, 2.0, 16000, 1, "PCM_16", seed=len(name))
    cut_in_half(source(root, "b.flac", 3.0, 16000, 1, "PCM_16"))
    nan = source(root, "d.wav", 2.0, 16000, 1, "FLOAT")
    audio = sf.read(str(nan), dtype="float32")[0]
    audio[30000] = np.nan
    sf.write(str(nan), audio, 16000, subtype="FLOAT")

    expected = write_shards(root, None, tmp_path / "whole", workers=1, progress=False)
    monkeypatch.setattr(featurize_module, "LONG_FILE_SECONDS", 1.0)
    monkeypatch.setattr(featurize_module, "BLOCK_FRAMES", 50)
    calls = []
    monkeypatch.setattr(featurize_module, "featurize_long",
                        lambda *args, **kw: calls.append(args[0].entry.path) or featurize_long(*args, **kw))
    result = write_shards(root, None, tmp_path / "blocks", workers=1, progress=False)
    assert sorted(calls) == ["a.wav", "b.flac", "c.wav", "d.wav"]  # every file went through the blocks
    rows = report(result)
    assert sorted(rows) == ["b.flac", "d.wav"], rows
    assert "lost sync" in rows["b.flac"]["problem"] and "NaN" in rows["d.wav"]["problem"], rows
    assert sorted(report(expected)) == ["b.flac", "d.wav"]
    shards = [json.dumps(r, sort_keys=True) for r in result.manifest["shards"]]
    assert shards == [json.dumps(r, sort_keys=True) for r in expected.manifest["shards"]]  # same bytes, same sha256
    assert (tmp_path / "blocks" / "index.bin").read_bytes() == (tmp_path / "whole" / "index.bin").read_bytes()
    np.testing.assert_allclose(result.manifest["stats"]["std"], expected.manifest["stats"]["std"], rtol=1e-12)


def test_a_truncated_long_file_is_one_report_line_naming_it(tmp_path):
    path = source(tmp_path, "t.flac", 3.0, 16000, 1, "PCM_16")
    cut_in_half(path)
    item = PlannedFile(0, FileEntry("t.flac", str(path)), 0, 3.0)
    with pytest.raises(featurize_module.BadInput, match=r"t\.flac: corrupt or unreadable audio at sample \d+"):
        featurize_long(item, LOGMEL, with_audio=True, block_frames=40)


def test_blocks_follow_the_decoded_values_not_the_seconds(tmp_path, monkeypatch):
    """A segment (and a long file) is read in blocks of at most BLOCK_VALUES decoded values, so a high rate or many
    channels cost the memory of a block, not of 5.5 minutes of them; the result is the one of a single block."""
    (tmp_path / "audio").mkdir()
    source(tmp_path / "audio", "hi.wav", 6.0, 96000, 4, "PCM_16")
    args = dict(segments=(2.0, 0.5), workers=1, progress=False, with_audio=True)
    whole = write_shards(tmp_path / "audio", None, tmp_path / "one", **args)
    monkeypatch.setattr(featurize_module, "BLOCK_VALUES", 96000 * 4 // 10)  # a tenth of a second a block
    blocks = write_shards(tmp_path / "audio", None, tmp_path / "many", **args)
    assert len(whole.manifest["shards"]) == len(blocks.manifest["shards"])
    one = {m["fname"]: m["data"] for s in whole.manifest["shards"] for m in tar_members(
        (tmp_path / "one" / s["name"]).read_bytes(), s["name"])}
    many = {m["fname"]: m["data"] for s in blocks.manifest["shards"] for m in tar_members(
        (tmp_path / "many" / s["name"]).read_bytes(), s["name"])}
    assert one.keys() == many.keys() and len([n for n in one if n.endswith(".spec.npy")]) == 3  # three segments
    for name in one:
        if name.endswith(".spec.npy"):
            a, b = npy_view(one[name]).astype(np.float32), npy_view(many[name]).astype(np.float32)
            np.testing.assert_allclose(a, b, atol=2e-2, rtol=2e-3)  # one float16 step, where resampling sums differ
        elif name.endswith(".audio.flac"):
            np.testing.assert_allclose(decode_flac(one[name]), decode_flac(many[name]), atol=2e-6)
        else:
            assert one[name] == many[name], name


def test_a_band_passed_or_peaked_file_is_never_cut_in_segments(tmp_path):
    """Segments run as separate tasks from their own first sample: the filter's state and log_spect's peak
    belong to the whole file, so such a file stays one task (read in blocks all the same)."""
    from spgdataset.write.plan import segments_of

    item = PlannedFile(0, FileEntry("a.wav", str(source(tmp_path, "a.wav", 3.0, 16000, 1, "PCM_16"))), 751, 3.0)
    plain = FeatureConfig(kind="linear", n_fft=512, hop_length=64, f_min=500.0, f_max=6000.0)
    assert len(segments_of(item, plain, (100, 10))) > 1
    for features in (LINEAR, BANDPASS, FeatureConfig(kind="linear", n_fft=512, hop_length=64, f_min=500.0,
                                                     f_max=6000.0, bandpass=True)):
        assert segments_of(item, features, (100, 10)) == [item]
