"""Resampling between any two rates in memory that follows the block (write/resample.py).

Rates that share few factors made torchaudio's kernel enormous (44,101 -> 16,000 Hz: 5.6 GB, 2,000,003 Hz:
256 GB). Common rate pairs keep torchaudio's Resample, byte for byte; the others take the direct path, which
evaluates torchaudio's own kernel values where they are needed and so agrees with it within float32 rounding.
Runs that could reach many GB on the code before (kernel sized by the rates) are held by an address-space limit.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from spgdataset import write_shards
from spgdataset.format.codec import decode_flac, unpack
from spgdataset.format.tar import tar_members
from spgdataset.write import audio
from spgdataset.write.blocks import BlockSource
from tests.helpers import index_rows, report

COMMON = [44100, 48000, 22050, 8000, 32000, 96000, 11025, 24000, 88200, 192000, 250000, 384000, 500000]
SPARE = 2 * 2**30  # address space a test may add to what the interpreter and torch have mapped


def noise(samples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.2, samples).astype(np.float32)


def vm_size() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


@contextlib.contextmanager
def address_space(spare: int = SPARE):
    """This process may map only `spare` more bytes for a while: a kernel sized by the rates fails fast
    instead of swapping a shared machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm_size() + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("orig, new", [(1601, 1000), (1000, 1601), (2003, 1500), (44100, 16000), (16000, 44100),
                                       (22050, 16000), (11025, 16000)])
def test_the_direct_path_is_torchaudios_kernel_and_output_within_rounding(orig, new):
    """Coprime pairs whose torchaudio kernel is still affordable, and common ones, forced onto the direct path."""
    from spgdataset.write.resample import Resampler

    direct, module = Resampler(orig, new, direct=True), torchaudio.transforms.Resample(orig, new)
    assert direct.width == int(module.width)
    kernel, first = direct.kernel_rows(torch.arange(direct.new_step))  # one row per phase, as torchaudio's
    full = torch.zeros_like(module.kernel[:, 0])
    full.scatter_(1, (first + direct.width)[:, None] + torch.arange(direct.taps), kernel)
    assert torch.equal(full, module.kernel[:, 0])  # the same values, and torchaudio's other taps are all zero
    for length in (3 * orig + 17, orig // 3, 5):
        signal = noise(length, seed=length)
        expected = module(torch.from_numpy(signal)).numpy()
        got = direct.whole(signal)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-6 * np.abs(expected).max(), (orig, new, length)


@pytest.mark.parametrize("orig", COMMON)
def test_common_rates_keep_torchaudios_resample_byte_for_byte(tmp_path, orig):
    path = tmp_path / f"{orig}.wav"
    sf.write(str(path), np.stack([noise(orig + 123), noise(orig + 123, seed=1)], 1), orig, subtype="PCM_16")
    mono = sf.read(str(path), dtype="float32")[0].mean(axis=1, dtype=np.float32)
    expected = torchaudio.transforms.Resample(orig, 16000)(torch.from_numpy(mono)).numpy()
    assert np.array_equal(audio.read_audio(str(path), 16000)[0], expected)
    with sf.SoundFile(str(path)) as sound:  # a long file's blocks: the same convolution over the same inputs
        assert np.array_equal(BlockSource(sound, 16000, "x").samples(0, len(expected)), expected)
    from spgdataset.write.resample import Resampler

    assert not Resampler(orig, 16000).direct


CHILD = """
import json, resource, sys
import spgdataset.write.job, torch
from spgdataset import write_shards
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + {spare}, resource.getrlimit(resource.RLIMIT_AS)[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = write_shards(sys.argv[1], None, sys.argv[2], workers=1, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"files": result.manifest["totals"]["files"], "report": result.manifest["report"]["files"],
                  "before": before, "peak": peak}}))
"""


def test_coprime_rates_are_written_in_bounded_memory(tmp_path):
    """One second at 44,101, 96,001 and 2,000,003 Hz: torchaudio's kernels would take 5.6, 12 and 256 GB."""
    root = tmp_path / "audio"
    root.mkdir()
    for rate in (44101, 96001, 2000003):
        sf.write(str(root / f"{rate}.wav"), noise(rate, seed=rate), rate, subtype="PCM_16")
    run = subprocess.run([sys.executable, "-c", CHILD.format(spare=SPARE), str(root), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["report"] == [] and found["files"] == 3
    assert found["peak"] < 1.5 * 2**30 and found["peak"] - found["before"] < 400 * 2**20, found
    samples = {row["path"]: row["samples"] for row in index_rows(tmp_path / "out")}
    assert samples == {"44101.wav": 16000, "96001.wav": 16000, "2000003.wav": 16000}


def test_a_rate_above_the_maximum_is_reported_at_the_header(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(str(root / "fast.wav"), noise(10**6), 20_000_000, subtype="PCM_16")  # the WAV fast path
    sf.write(str(root / "float.wav"), noise(10**6), 20_000_000, subtype="FLOAT")  # libsndfile
    sf.write(str(root / "fine.wav"), noise(16000), 16000, subtype="PCM_16")
    result = write_shards(root, None, tmp_path / "out", workers=1, progress=False)
    message = "sample rate 20000000 Hz is above 10000000 Hz (a damaged header?)"
    assert {path: (row["kind"], row["problem"]) for path, row in report(result).items()} == {
        "fast.wav": ("bad", message), "float.wav": ("bad", message)}
    for name in ("fast.wav", "float.wav"):
        with pytest.raises(audio.BadInput, match=f"{name}: sample rate 20000000 Hz is above"):
            audio.read_audio(str(root / name), 16000, name)


def stored_audio(folder) -> dict:
    """{(path, first sample at 16 kHz): audio} of every sample in a shard folder."""
    found = {}
    for shard in json.loads((folder / "manifest.json").read_text())["shards"]:
        members = {m["fname"]: bytes(m["data"]) for m in tar_members((folder / shard["name"]).read_bytes(), "x")}
        for name, data in members.items():
            if name.endswith(".info.msgpack"):
                info = unpack(data)
                first = info["segment"]["offset"] * 160 if "segment" in info else 0
                found[info["path"], first] = decode_flac(members[name.replace(".info.msgpack", ".audio.flac")])
    return found


def test_segments_of_a_long_file_at_a_coprime_rate_hold_the_whole_files_samples(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    rate = 44101
    sf.write(str(root / "long.wav"), np.stack([noise(int(5.3 * rate)), noise(int(5.3 * rate), 1)], 1), rate,
             subtype="PCM_16")
    with address_space():
        whole = write_shards(root, None, tmp_path / "whole", with_audio=True, workers=1, progress=False)
        parts = write_shards(root, None, tmp_path / "parts", with_audio=True, workers=1, progress=False,
                             segments=(1.03, 0.25))
    assert report(whole) == {} and report(parts) == {}
    (_, expected), = stored_audio(tmp_path / "whole").items()
    segments = stored_audio(tmp_path / "parts")
    # 531 frames in segments owning 103: the tail of 16 lies within the overlap (25) of the fifth, which owns it
    assert len(segments) == 5 and len(expected) == -(-int(5.3 * rate) * 16000 // rate)
    for (_, first), samples in segments.items():
        assert np.array_equal(samples, expected[first : first + len(samples)]), first


@pytest.mark.parametrize("rate, channels, subtype", [(44101, 1, "PCM_16"), (8001, 2, "FLOAT"), (96001, 3, "PCM_24")])
def test_any_range_of_a_long_file_equals_the_whole_files_resampling(tmp_path, rate, channels, subtype):
    path = tmp_path / "x.wav"
    sf.write(str(path), np.stack([noise(int(1.7 * rate), seed=c) for c in range(channels)], 1), rate, subtype=subtype)
    with address_space(), sf.SoundFile(str(path)) as sound:
        whole = audio.read_audio(str(path), 16000)[0]
        source = BlockSource(sound, 16000, "x.wav")
        assert source.samples_count == len(whole)
        for lo, hi in [(0, len(whole)), (0, 1), (1, 2), (777, 9001), (len(whole) - 5, len(whole)), (3000, 3000)]:
            assert np.array_equal(source.samples(lo, hi), whole[lo:hi]), (lo, hi)
