"""vak users: the linear spectrogram, vak's npz files, annotation files and labelset, for npz files and shards.

The spectrogram is checked against two computations made without this library: matplotlib's specgram, which
vak calls, and torch.stft in float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from spgdataset import FeatureConfig, SpectrogramDataset, SpectrogramDatasetRouter, SpgError, write_shards
from spgdataset.vak import make_spectrogram_files_from_audio_files
from spgdataset.write.linear import LinearSpectrogram, transform
from tests.helpers import report, run_cli

RATE = 32000


def chirp(seconds: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    return (0.4 * np.sin(2 * np.pi * (1000 + 3000 * t) * t) + noise).astype(np.float32)


def psd_reference(audio: np.ndarray, rate: int, n_fft: int, hop: int) -> np.ndarray:
    """One-sided power density of centred frames, from torch.stft in float64."""
    window = torch.hann_window(n_fft, periodic=False, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(audio.astype(np.float64)), n_fft, hop, window=window, center=True,
                      pad_mode="reflect", return_complex=True).abs().square().numpy()
    spec /= rate * float((window ** 2).sum())
    spec[1 : (n_fft + 1) // 2] *= 2  # every bin but DC (and Nyquist for even n_fft) has a mirror image
    return spec


def test_linear_spectrogram_is_stft_power_density_on_the_band():
    audio = chirp(1.0)
    config = FeatureConfig(sample_rate=RATE, n_fft=512, hop_length=64, f_min=500.0, f_max=10000.0, kind="linear",
                           storage_dtype="float32")
    freqs = np.fft.rfftfreq(512, 1 / RATE)
    band = (freqs >= 500) & (freqs < 10000)
    assert config.n_mels == band.sum() and np.array_equal(config.freq_bins(), freqs[band])
    got = LinearSpectrogram(config)(audio)
    assert got.flags.c_contiguous  # stored as npy bytes, row-major
    expected = psd_reference(audio, RATE, 512, 64)[band]
    assert got.shape == expected.shape == (band.sum(), 1 + len(audio) // 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=1e-6 * expected.max())
    np.testing.assert_allclose(config.time_bins(got.shape[1]), np.arange(got.shape[1]) * 64 / RATE)


def test_linear_spectrogram_matches_matplotlib_specgram_which_vak_calls():
    from matplotlib import mlab

    audio = chirp(0.5, seed=1)
    config = FeatureConfig(sample_rate=RATE, n_fft=512, hop_length=64, kind="linear", storage_dtype="float32")
    got = LinearSpectrogram(config)(audio)
    expected, freqs, times = mlab.specgram(audio.astype(np.float64), NFFT=512, Fs=RATE, noverlap=512 - 64)
    # matplotlib's frames start at sample 0; ours are centred: our frame t + 4 is its frame t (256 = 4 x 64)
    assert np.array_equal(config.freq_bins(), freqs)
    np.testing.assert_allclose(got[:, 4 : 4 + expected.shape[1]], expected, rtol=2e-3, atol=1e-6 * expected.max())
    np.testing.assert_allclose(config.time_bins(got.shape[1])[4 : 4 + len(times)], times)


def test_vak_transforms_and_thresholds():
    power = np.array([[0.0, 1e-8, 1e-3], [0.5, 2.0, 4.0]])
    np.testing.assert_allclose(transform(power.copy(), "log_spect", 6.25),
                               np.maximum(np.log10(np.maximum(power, 1e-300) / 4.0), -6.25))
    np.testing.assert_allclose(transform(power.copy(), "log_spect_plus_one", 0.1),
                               np.maximum(np.log10(power + 1), 0.1))
    np.testing.assert_allclose(transform(power.copy(), None, 1e-3), np.maximum(power, 1e-3))
    np.testing.assert_allclose(transform(power.copy(), "log", None), np.log(power + np.finfo(np.float64).eps))
    assert np.array_equal(transform(power.copy(), None, 0), power)  # vak: a thresh of 0 is no threshold
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isneginf(transform(power.copy(), "log_spect", None)[0, 0])


def test_feature_config_checks_the_linear_parameters():
    with pytest.raises(ValueError, match="transform_type"):
        FeatureConfig(kind="linear", transform_type="log10", storage_dtype="float32")
    with pytest.raises(ValueError, match="float32"):
        FeatureConfig(kind="linear", storage_dtype="float16")  # raw power in float16 would flush small values
    assert FeatureConfig(kind="linear").storage_dtype == "float32"
    assert FeatureConfig(kind="linear", transform_type="log_spect").storage_dtype == "float16"
    with pytest.raises(ValueError, match="kind='linear'"):
        FeatureConfig(thresh=3.0)
    with pytest.raises(ValueError, match="kind"):
        FeatureConfig(kind="mfcc")
    with pytest.raises(ValueError, match="no frequency bin"):
        FeatureConfig(kind="linear", f_min=1001.0, f_max=1030.0, storage_dtype="float32")
    # log-mel configurations keep their fingerprints: shards written before still match
    assert FeatureConfig().fingerprint() == "07c14d79c32895ff"
    assert FeatureConfig(n_mels=64, storage_dtype="float32").fingerprint() == "eef50208050edab1"
    linear = FeatureConfig(kind="linear", transform_type="log_spect", thresh=6.25, n_fft=512, hop_length=64)
    assert FeatureConfig.from_dict(linear.to_dict()) == linear and linear.fingerprint() != FeatureConfig().fingerprint()
    assert "bandpass" not in linear.to_dict()  # linear sets written before the option keep their fingerprint
    filtered = FeatureConfig(kind="linear", transform_type="log_spect", f_min=500.0, f_max=6000.0, bandpass=True)
    assert FeatureConfig.from_dict(filtered.to_dict()) == filtered and filtered.fingerprint() != FeatureConfig(
        kind="linear", transform_type="log_spect", f_min=500.0, f_max=6000.0).fingerprint()
    for wrong in (dict(kind="linear", bandpass=True), dict(kind="linear", f_min=500.0, bandpass=True),
                  dict(kind="linear", f_max=6000.0, bandpass=True), dict(kind="linear", f_min=5.0, f_max=60.0,
                                                                     bandpass=1)):
        with pytest.raises(ValueError, match=r"0 < f_min < f_max < sample_rate/2"):
            FeatureConfig(storage_dtype="float32", **wrong)
    with pytest.raises(ValueError, match="bandpass applies to kind='linear' only"):
        FeatureConfig(bandpass=True)


def birdsong(tmp_path, names=("a", "b", "c"), rate=RATE):
    """A folder of WAVs, each with a simple-seq csv beside it; c holds a label 'x'."""
    folder = tmp_path / "birds"
    folder.mkdir()
    for i, name in enumerate(names):
        sf.write(str(folder / f"{name}.wav"), chirp(0.6, rate, seed=i), rate, subtype="PCM_16")
        labels = ["a", "b", "x" if name == "c" else "a"]
        rows = [f"{0.05 + 0.15 * j:.2f},{0.15 + 0.15 * j:.2f},{label}" for j, label in enumerate(labels)]
        (folder / f"{name}.wav.csv").write_text("onset_s,offset_s,label\n" + "\n".join(rows) + "\n")
    return folder


def test_npz_files_hold_what_vak_writes(tmp_path):
    """vak's layout and arrays: float64, frames from sample 0 (matplotlib's specgram, which vak calls, after
    scipy's Butterworth band-pass); tests/test_vak_reference.py compares the values with vak's own files."""
    from matplotlib import mlab
    from scipy.signal import butter, lfilter

    folder = birdsong(tmp_path)
    params = {"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 10000], "transform_type": "log_spect",
              "thresh": 6.25}
    paths = make_spectrogram_files_from_audio_files("wav", params, tmp_path / "spect", audio_dir=folder)
    assert paths == [str(tmp_path / "spect" / f"{n}.wav.spect.npz") for n in "abc"]
    for path, name in zip(paths, "abc"):
        with zipfile.ZipFile(path) as z:
            assert sorted(z.namelist()) == ["audio_path.npy", "f.npy", "s.npy", "t.npy"]
        with np.load(path, allow_pickle=False) as npz:  # nothing pickled: plain arrays and a string
            s, f, t, audio_path = npz["s"], npz["f"], npz["t"], str(npz["audio_path"])
        audio = sf.read(str(folder / f"{name}.wav"))[0]
        assert audio_path == str(folder / f"{name}.wav") and s.dtype == np.float64
        b, a = butter(5, [500 / (RATE / 2), 10000 / (RATE / 2)], btype="band")
        power, freqs, times = mlab.specgram(lfilter(b, a, audio), NFFT=512, Fs=RATE, noverlap=512 - 64)
        band = (freqs >= 500) & (freqs < 10000)
        expected = np.maximum(np.log10(power / power.max()), -6.25)[band]
        assert s.shape == expected.shape == (band.sum(), (len(audio) - 512) // 64 + 1)
        assert np.array_equal(f, freqs[band]) and np.array_equal(t, times)
        np.testing.assert_allclose(s, expected, rtol=1e-9)


def test_centred_npz_files_are_the_shards_linear_spectrogram(tmp_path):
    """frames="centred": the shards' frames (centred, float32) with vak's band-pass and peak (every bin)."""
    from scipy.signal import butter, lfilter

    folder = birdsong(tmp_path, names=("a",))
    params = {"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 10000], "transform_type": "log_spect",
              "thresh": 6.25}
    (path,) = make_spectrogram_files_from_audio_files("wav", params, tmp_path / "spect", audio_dir=folder,
                                                      frames="centred")
    config = FeatureConfig(sample_rate=RATE, n_fft=512, hop_length=64, f_min=500.0, f_max=10000.0, kind="linear",
                           transform_type="log_spect", thresh=6.25, storage_dtype="float32", bandpass=True)
    with np.load(path, allow_pickle=False) as npz:
        s, f, t = npz["s"], npz["f"], npz["t"]
    audio = sf.read(str(folder / "a.wav"), dtype="float32")[0]
    assert s.dtype == np.float32 and s.shape == (len(f), len(t)) == (config.n_mels, 1 + len(audio) // 64)
    assert np.array_equal(f, config.freq_bins()) and np.array_equal(t, config.time_bins(len(t)))
    b, a = butter(5, [500 / (RATE / 2), 10000 / (RATE / 2)], btype="band")
    power = psd_reference(lfilter(b, a, audio.astype(np.float64)).astype(np.float32), RATE, 512, 64)
    band = (np.fft.rfftfreq(512, 1 / RATE) >= 500) & (np.fft.rfftfreq(512, 1 / RATE) < 10000)
    expected = np.maximum(np.log10(power[band] / power.max()), -6.25)  # the peak of every bin, as vak
    np.testing.assert_allclose(s, expected, atol=2e-3)
    with pytest.raises(SpgError, match="frames must be one of 'vak', 'centred'"):
        make_spectrogram_files_from_audio_files("wav", params, tmp_path / "x", audio_dir=folder, frames="center")


def test_custom_key_names_files_list_and_annotations_with_labelset(tmp_path):
    folder = birdsong(tmp_path)
    params = {"spect_key": "S", "freqbins_key": "F", "timebins_key": "T", "audio_path_key": "wav"}
    files = [str(folder / f"{n}.wav") for n in "abc"]
    annots = [str(folder / f"{n}.wav.csv") for n in "abc"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # c is filtered by the labelset, not broken: no warning
        paths = make_spectrogram_files_from_audio_files("wav", params, tmp_path / "out", audio_files=files,
                                                        annot_list=annots, annot_format="simple-seq", labelset="ab")
    assert [os.path.basename(p) for p in paths] == ["a.wav.spect.npz", "b.wav.spect.npz"]  # c has label x
    with np.load(paths[0], allow_pickle=False) as npz:
        assert sorted(npz.files) == ["F", "S", "T", "wav"] and npz["S"].shape[0] == 257
    mapped = make_spectrogram_files_from_audio_files(
        "wav", {}, tmp_path / "mapped", audio_annot_map={f: a for f, a in zip(files, annots)},
        annot_format="simple-seq", labelset=["a", "b", "x"])
    assert len(mapped) == 3


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path):
    folder = birdsong(tmp_path, names=("a", "b"))
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.warns(UserWarning, match=r"1 of 3 audio files were skipped: .*broken\.wav"):
        paths = make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "out", audio_dir=folder)
    assert [os.path.basename(p) for p in paths] == ["a.wav.spect.npz", "b.wav.spect.npz"]


def test_vak_argument_mistakes_are_one_line_errors(tmp_path):
    folder = birdsong(tmp_path, names=("a",))
    call = make_spectrogram_files_from_audio_files
    with pytest.raises(SpgError, match="must specify one of"):
        call("wav", {}, tmp_path / "o")
    with pytest.raises(SpgError, match="only one of"):
        call("wav", {}, tmp_path / "o", audio_dir=folder, audio_files=[str(folder / "a.wav")])
    with pytest.raises(SpgError, match="unknown keys fftsize"):
        call("wav", {"fftsize": 512}, tmp_path / "o", audio_dir=folder)
    with pytest.raises(SpgError, match="cbin"):
        call("cbin", {}, tmp_path / "o", audio_dir=folder)
    with pytest.raises(SpgError, match="should all be wav files"):
        call("wav", {}, tmp_path / "o", audio_files=[str(folder / "a.wav.csv")])
    other = tmp_path / "other"
    other.mkdir()
    sf.write(str(other / "a.wav"), chirp(0.2), RATE)
    with pytest.raises(SpgError, match="both be written as a.wav.spect.npz"):
        call("wav", {}, tmp_path / "o", audio_files=[str(folder / "a.wav"), str(other / "a.wav")])


@pytest.mark.slow
def test_dask_bag_kwargs_give_the_same_files(tmp_path):
    pytest.importorskip("dask.bag")
    folder = birdsong(tmp_path, names=("a", "b"))
    local = make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "local", audio_dir=folder)
    on_dask = make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "dask", audio_dir=folder,
                                                      dask_bag_kwargs={"npartitions": 2})
    assert [os.path.basename(p) for p in on_dask] == [os.path.basename(p) for p in local]
    for a, b in zip(local, on_dask):
        with np.load(a) as x, np.load(b) as y:
            assert np.array_equal(x["s"], y["s"]) and np.array_equal(x["t"], y["t"])


def test_dask_bag_kwargs_run_in_threads_or_on_the_scheduler_dask_config_names(tmp_path, monkeypatch):
    dask = pytest.importorskip("dask")
    import threading

    import spgdataset.vak as vak

    folder, threads = birdsong(tmp_path, names=("a", "b", "c")), []
    real = vak.spect_file
    monkeypatch.setattr(vak, "spect_file", lambda *args: threads.append(threading.get_ident()) or real(*args))
    make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "threads", audio_dir=folder,
                                            dask_bag_kwargs={"npartitions": 3})
    assert len(threads) == 3 and threading.get_ident() not in threads  # the threaded scheduler's pool
    threads.clear()
    with dask.config.set(scheduler="synchronous"):  # a debugging session's choice is kept
        make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "sync", audio_dir=folder,
                                                dask_bag_kwargs={"npartitions": 3})
    assert threads == [threading.get_ident()] * 3


@pytest.mark.slow
def test_dask_bag_kwargs_run_on_the_callers_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    folder = birdsong(tmp_path, names=("a", "b"))
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        with distributed.get_task_stream(client) as stream:
            paths = make_spectrogram_files_from_audio_files("wav", {}, tmp_path / "out", audio_dir=folder,
                                                            dask_bag_kwargs={"npartitions": 2})
    assert [os.path.basename(p) for p in paths] == ["a.wav.spect.npz", "b.wav.spect.npz"]
    assert len(stream.data) >= 2  # the bag's tasks ran on the client's workers


@pytest.mark.slow
def test_dask_bag_kwargs_work_in_a_script_without_a_main_guard(tmp_path):
    """vak users call the function at the top of a script: dask's process scheduler would re-run the script in
    each new process (BrokenProcessPool). Run as such a script, in its own process."""
    pytest.importorskip("dask.bag")
    folder = birdsong(tmp_path, names=("a", "b", "c"))
    script = tmp_path / "make_spects.py"
    script.write_text(
        "from spgdataset.vak import make_spectrogram_files_from_audio_files\n"
        f"files = make_spectrogram_files_from_audio_files('wav', {{'fft_size': 256, 'step_size': 32}}, "
        f"{str(tmp_path / 'out')!r}, audio_dir={str(folder)!r}, dask_bag_kwargs={{'npartitions': 3}})\n"
        "print(len(files))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}.wav.spect.npz" for n in "abc"]


LINEAR_FLAGS = ["--spectrogram", "linear", "--transform-type", "log_spect", "--thresh", "6.25", "--sample-rate",
                str(RATE), "--n-fft", "512", "--hop-length", "64", "--workers", "1", "--quiet"]


@pytest.mark.slow
def test_shards_from_annotation_files_with_labelset_and_a_linear_spectrogram(tmp_path):
    folder = birdsong(tmp_path, names=("a", "b", "c", "d"))
    (folder / "d.wav.csv").unlink()  # d has no annotation: reported, the rest written
    out = tmp_path / "shards"
    done = run_cli([folder, out, "--annot-format", "simple-seq", "--labelset", "ab", *LINEAR_FLAGS])
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    rows = {row["path"]: row for row in manifest["report"]["files"]}
    assert rows["c.wav"]["kind"] == "filtered" and "['x']" in rows["c.wav"]["problem"]
    assert rows["d.wav"]["kind"] == "bad" and "no simple-seq annotation beside it" in rows["d.wav"]["problem"]
    config = FeatureConfig.from_dict(manifest["features"])
    assert (config.kind, config.transform_type, config.thresh, config.n_mels) == ("linear", "log_spect", 6.25, 257)
    assert np.array_equal(config.freq_bins(), np.fft.rfftfreq(512, 1 / RATE))

    from tests.helpers import index_rows
    index = {row["path"]: row for row in index_rows(out)}
    assert sorted(index) == ["a.wav", "b.wav"]
    # 0.05-0.15 s "a", 0.20-0.30 s "b", 0.35-0.45 s "a", in samples at 32 kHz
    assert index["a.wav"]["intervals"] == {"a": [[1600, 4800], [11200, 14400]], "b": [[6400, 9600]]}
    assert index["a.wav"]["metadata"] == {"labels": '["a", "b", "a"]', "annotation": "a.wav.csv"}

    ds = SpectrogramDataset(str(out), window_size_sec=0.1, window_offset_sec=0.05, content_intervals=["b"],
                            output_configuration={"masks": ["a", "b"], "meta": ["labels"]}, normalize=False,
                            shuffle=False)
    items = list(ds)
    assert items and all(item["spectrogram"].shape == (257, 50) for item in items)
    audio = sf.read(str(folder / "a.wav"), dtype="float32")[0]
    whole = LinearSpectrogram(config)(audio)
    for item in (i for i in items if i["path"] == "a.wav"):
        start = int(item["start"])
        np.testing.assert_allclose(item["spectrogram"].numpy(), whole[:, start : start + 50], atol=4e-3)
        frames = np.arange(start, start + 50) * 64
        assert np.array_equal(item["masks"]["b"].numpy(), (frames >= 6400) & (frames < 9600))
        assert json.loads(item["meta"]["labels"]) == ["a", "b", "a"]


def test_an_annotation_that_does_not_fit_its_audio_is_reported(tmp_path):
    folder = birdsong(tmp_path, names=("a", "b", "c"))
    (folder / "b.wav.csv").write_text("onset_s,offset_s,label\n0.1,2.5,a\n")  # the audio is 0.6 s
    (folder / "a.wav.csv").write_text("onset_s,offset_s,label\n0.1,oops,a\n")
    result = write_shards(folder, None, tmp_path / "out", annot_format="simple-seq", progress=False, workers=1)
    rows = report(result)
    assert "b.wav" in rows and "ends after" in rows["b.wav"]["problem"], rows
    assert "a.wav" in rows and "a.wav.csv" in rows["a.wav"]["problem"] and "oops" in rows["a.wav"]["problem"], rows
    assert result.manifest["totals"]["files"] == 1  # c.wav
    with pytest.raises(SpgError, match="need annot_format"):
        write_shards(folder, None, tmp_path / "o2", labelset="ab", progress=False, workers=1)


def test_the_router_does_not_mix_spectrograms_of_other_kinds_or_transforms(tmp_path):
    folder = birdsong(tmp_path, names=("a", "b"))
    common = dict(sample_rate=RATE, n_fft=512, hop_length=64, kind="linear", thresh=6.25)
    for name, transform_type in (("log", "log_spect"), ("plus", "log_spect_plus_one")):
        write_shards(folder, None, tmp_path / name, features=FeatureConfig(transform_type=transform_type, **common),
                     progress=False, workers=1)
    sets = [SpectrogramDataset(str(tmp_path / name), window_size_sec=0.1, output_configuration={"masks": []})
            for name in ("log", "plus")]
    SpectrogramDatasetRouter([sets[0], sets[0]])
    with pytest.raises(ValueError, match="transform_type"):
        SpectrogramDatasetRouter(sets)


def test_an_output_dir_that_is_a_file_is_named(tmp_path):
    folder = birdsong(tmp_path, names=("a",))
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    with pytest.raises(SpgError, match=r"^output_dir .*taken\.txt: is a file, not a folder"):
        make_spectrogram_files_from_audio_files("wav", {}, taken, audio_dir=folder)
    with pytest.raises(SpgError, match=r"^output_dir .*taken\.txt/spect: cannot make the folder"):
        make_spectrogram_files_from_audio_files("wav", {}, taken / "spect", audio_dir=folder)
    assert taken.read_text() == "not a folder"
