"""vak's own numbers: the npz function against `.spect.npz` files that vak 1.1.0 itself wrote (tests/data/vak,
made by tools/make_vak_reference.py in a separate environment; its README says how and with which versions),
and shards written with the band-pass against the same files.

Each config folder holds vak's spect_params and its outputs for two or so of the committed sounds: speech-like
at 16 kHz, birdsong-like at 32 kHz, a low-frequency hum that a band-pass removes, a file with digital silence
(log10 of 0: -inf where no thresh floors it); with and without cutoffs, every transform type, thresh on and off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spgdataset import FeatureConfig, write_shards
from spgdataset.vak import make_spectrogram_files_from_audio_files
from spgdataset.write.linear import LinearSpectrogram

DATA = Path(__file__).parent / "data" / "vak"
CONFIGS = sorted(p.name for p in (DATA / "spect").iterdir() if p.is_dir())


def vak_params(config: str) -> tuple:
    recorded = json.loads((DATA / "spect" / config / "spect_params.json").read_text())
    return recorded["spect_params"], recorded["audio_files"]


def assert_vak_equal(ours: dict, theirs: dict, name: str) -> None:
    """Same shapes, f and t equal, s within 1e-6 relative where finite and non-finite at the same places."""
    s, expected = ours["s"], theirs["s"]
    assert s.dtype == expected.dtype == np.float64 and s.shape == expected.shape, name
    assert np.array_equal(ours["f"], theirs["f"]) and np.array_equal(ours["t"], theirs["t"]), name
    finite = np.isfinite(expected)
    assert np.array_equal(np.isfinite(s), finite) and np.array_equal(s[~finite], expected[~finite]), name
    np.testing.assert_allclose(s[finite], expected[finite], rtol=1e-6, atol=0, err_msg=name)


def test_the_committed_data_cover_what_vak_users_set():
    params = [vak_params(c)[0] for c in CONFIGS]
    assert {p.get("transform_type") for p in params} == {None, "log_spect", "log_spect_plus_one"}
    assert any(p.get("freq_cutoffs") for p in params) and any(not p.get("freq_cutoffs") for p in params)
    assert any(p.get("thresh") for p in params) and any(not p.get("thresh") for p in params)
    rates = {sf.info(str(DATA / "audio" / f)).samplerate for c in CONFIGS for f in vak_params(c)[1]}
    assert rates == {16000, 32000}


@pytest.mark.parametrize("config", CONFIGS)
def test_npz_files_equal_the_ones_vak_wrote(config, tmp_path):
    params, names = vak_params(config)
    audio = [str(DATA / "audio" / name) for name in names]
    paths = make_spectrogram_files_from_audio_files("wav", params, tmp_path, audio_files=audio)
    assert [os.path.basename(p) for p in paths] == sorted(f"{name}.spect.npz" for name in names)
    for path in paths:
        with np.load(path, allow_pickle=False) as ours, \
                np.load(DATA / "spect" / config / os.path.basename(path), allow_pickle=False) as theirs:
            assert sorted(ours.files) == sorted(theirs.files) == ["audio_path", "f", "s", "t"]
            assert_vak_equal(dict(ours), dict(theirs), f"{config}/{os.path.basename(path)}")
            assert str(ours["audio_path"]).endswith(str(theirs["audio_path"]))


def test_the_band_pass_is_what_makes_the_values_equal(tmp_path):
    """Without vak's filter the hum below 500 Hz sets log_spect's maximum, and every value moves."""
    config = "fft512_64_bp500-6000_log_thresh6.25"
    params, _ = vak_params(config)
    audio = [str(DATA / "audio" / "lowfreq_16k_pcm16.wav")]
    (path,) = make_spectrogram_files_from_audio_files("wav", params, tmp_path, audio_files=audio)
    unfiltered = make_spectrogram_files_from_audio_files("wav", dict(params, freq_cutoffs=None), tmp_path / "u",
                                                         audio_files=audio)[0]
    with np.load(path) as ours, np.load(DATA / "spect" / config / "lowfreq_16k_pcm16.wav.spect.npz") as theirs, \
            np.load(unfiltered) as plain:
        band = (plain["f"] >= 500) & (plain["f"] < 6000)
        assert np.abs(plain["s"][band] - theirs["s"]).max() > 0.5 > np.abs(ours["s"] - theirs["s"]).max()


@pytest.mark.parametrize("config", ["fft512_64_bp500-6000_log_thresh6.25", "fft256_32_bp500-10000_raw",
                                    "tweetynet_512_64_bp500-10000_log_thresh6.25"])
def test_shards_with_the_band_pass_hold_vaks_values_in_centred_frames(config, tmp_path):
    """spg-shard --spectrogram linear --bandpass: vak's frame t is the shards' frame t + fft_size / (2 step), its
    values to float32 rounding (the shards' FFT), away from the file's ends (where centred frames reflect)."""
    params, names = vak_params(config)
    low, high = params["freq_cutoffs"]
    for name in names:
        rate = sf.info(str(DATA / "audio" / name)).samplerate
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_bytes((DATA / "audio" / name).read_bytes())
        features = FeatureConfig(sample_rate=rate, n_fft=params["fft_size"], hop_length=params["step_size"],
                                 f_min=float(low), f_max=float(high), kind="linear", bandpass=True,
                                 transform_type=params.get("transform_type"), thresh=params.get("thresh"),
                                 storage_dtype="float32")
        write_shards(folder, None, tmp_path / f"shards_{name}", features=features, progress=False, workers=1)
        audio = sf.read(str(DATA / "audio" / name), dtype="float32")[0]
        with np.load(DATA / "spect" / config / f"{name}.spect.npz") as theirs:
            expected, f, t = theirs["s"], theirs["f"], theirs["t"]
        shift = params["fft_size"] // (2 * params["step_size"])
        ours = stored_spectrogram(tmp_path / f"shards_{name}")
        assert np.array_equal(features.freq_bins(), f)
        np.testing.assert_allclose(features.time_bins(ours.shape[1])[shift : shift + len(t)], t)
        inner = slice(2, len(t) - 2)
        got = ours[:, shift : shift + len(t)][:, inner]
        if params.get("transform_type") is None:
            np.testing.assert_allclose(got, expected[:, inner], rtol=2e-3, atol=1e-6 * expected.max())
        else:
            np.testing.assert_allclose(got, expected[:, inner], atol=2e-3)
        assert LinearSpectrogram(features).config.bandpass and len(audio) > params["fft_size"]


def stored_spectrogram(shards: Path) -> np.ndarray:
    """The one file's whole spectrogram as its shard holds it (float32 storage), read from the tar."""
    import io
    import tarfile

    (shard,) = sorted(shards.glob("shard-*.tar"))
    with tarfile.open(shard) as tar:
        (member,) = [m for m in tar.getmembers() if m.name.endswith(".spec.npy")]
        return np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)


@pytest.mark.slow
def test_the_bandpass_flag_of_spg_shard(tmp_path):
    from tests.helpers import run_cli

    folder = tmp_path / "audio"
    folder.mkdir()
    (folder / "a.wav").write_bytes((DATA / "audio" / "lowfreq_16k_pcm16.wav").read_bytes())
    flags = ["--spectrogram", "linear", "--n-fft", "512", "--hop-length", "64", "--transform-type", "log_spect",
             "--thresh", "6.25", "--f-max", "6000", "--bandpass", "--quiet"]
    refused = run_cli([folder, tmp_path / "refused", *flags])
    assert refused.returncode != 0 and "0 < f_min < f_max < sample_rate/2" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()  # a usage error, as any flag's
    done = run_cli([folder, tmp_path / "shards", *flags, "--f-min", "500"])
    assert done.returncode == 0, done.stderr
    features = FeatureConfig.from_dict(json.loads((tmp_path / "shards" / "manifest.json").read_text())["features"])
    assert features.bandpass and (features.f_min, features.f_max) == (500.0, 6000.0)
    with np.load(DATA / "spect" / "fft512_64_bp500-6000_log_thresh6.25" / "lowfreq_16k_pcm16.wav.spect.npz") as v:
        expected = v["s"]
    got = stored_spectrogram(tmp_path / "shards")[:, 4 : 4 + expected.shape[1]].astype(np.float64)
    np.testing.assert_allclose(got[:, 2:-2], expected[:, 2:-2], atol=4e-3)  # float16 storage
