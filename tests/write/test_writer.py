"""The shard writer (spgdataset.write, spg-shard) against docs/design.md: contents, bad input, manifest,
determinism, resume after SIGKILL, --with-audio, --part and refusing a different job.

Corpora come from spgdataset.demo.make_corpus (see conftest.py). Expected values are computed here
independently: torchaudio for spectrograms and resampling, exact fractions for rescaled intervals,
numpy for statistics, hashlib for digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from math import ceil, floor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from spgdataset.demo import make_corpus
from spgdataset.errors import SpgError
from spgdataset.format.codec import npy_view, unpack
from spgdataset.format.features import FeatureConfig
from spgdataset.write.job import write_shards

SR, N_FFT, HOP, N_MELS = 16000, 400, 160, 80
SHARD_RE = re.compile(r"^shard-\d{6}\.tar$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SUMMARY_RE = re.compile(r"(\d+) shards written, (\d+) already complete")

_MEL = torchaudio.transforms.MelSpectrogram(SR, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)


# --------------------------------------------------------------------------- independent references


def ref_logmel(audio: np.ndarray) -> np.ndarray:
    """The docs/design.md definition: torchaudio MelSpectrogram -> log(x + 1e-6), float32 (n_mels, T)."""
    with torch.inference_mode():
        return torch.log(_MEL(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))) + 1e-6).numpy()


def ref_audio(path) -> np.ndarray:
    """The file downmixed to mono (channel mean) and resampled to 16 kHz with torchaudio."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != SR:
        with torch.inference_mode():
            mono = torchaudio.transforms.Resample(rate, SR)(torch.from_numpy(np.ascontiguousarray(mono))).numpy()
    return mono


def half_up(position: int, orig: int, new: int = SR) -> int:
    return floor(Fraction(position * new, orig) + Fraction(1, 2))


def assert_float16_close(stored: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Equal within float16 rounding (half an ulp is 2**-11 relative; allow one ulp)."""
    assert stored.dtype == np.float16, what
    assert stored.shape == reference.shape, what
    np.testing.assert_allclose(stored.astype(np.float32), reference, rtol=2**-10, atol=2**-14, err_msg=what)
    assert np.mean(stored == reference.astype(np.float16)) > 0.99, what


def npy_header(data: bytes):
    """(shape, fortran_order, dtype) straight from the .npy header."""
    buf = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return read(buf)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def by_path(helpers, out_dir):
    """{relative path: sample dict with decoded 'info' and 'spec'} over the shards of `out_dir`."""
    found = {}
    for key, sample in helpers.samples_of(out_dir).items():
        info = unpack(sample["info.msgpack"])
        assert info["path"] not in found, f"{info['path']} stored twice"
        found[info["path"]] = dict(sample, key=key, info=info, spec=helpers.npy(sample["spec.npy"]))
    return found


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """The CLI's contract for a failed run: exit 1, one line `spg-shard: error: ...`, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("spg-shard: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def nonempty(intervals: dict) -> dict:
    """Intervals without names that hold no span (the index keeps only spans; info.msgpack keeps all)."""
    return {name: spans for name, spans in intervals.items() if spans}


def no_temporaries(out_dir) -> list:
    return [os.path.join(folder, name) for folder, _, names in os.walk(out_dir) for name in names
            if ".tmp" in name]


def write_metadata(root: Path, metadata: dict) -> str:
    path = root / "metadata.json"
    path.write_text(json.dumps(metadata), encoding="utf-8")
    return str(path)


def noise(seconds: float, rate: int = SR, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


# --------------------------------------------------------------------------- spectrograms


def test_spectrograms_equal_torchaudio_logmel(run16k, corpus16k, helpers):
    out, _ = run16k
    root, meta_path = corpus16k
    metadata = json.loads(Path(meta_path).read_text())
    stored = by_path(helpers, out)
    assert sorted(stored) == sorted(metadata)
    for path, sample in stored.items():
        audio, rate = sf.read(os.path.join(root, path), dtype="float32")
        assert rate == SR and audio.ndim == 1
        frames = 1 + len(audio) // HOP
        shape, fortran, dtype = npy_header(sample["spec.npy"])
        assert (shape, fortran, dtype) == ((N_MELS, frames), False, np.dtype("float16")), path
        spec = sample["spec"]
        np.testing.assert_array_equal(npy_view(sample["spec.npy"]), spec)  # the zero-copy reader agrees
        assert_float16_close(spec, ref_logmel(audio), path)
        info = sample["info"]
        assert info["frames"] == frames and info["samples"] == len(audio) == metadata[path]["length"]
        assert info["sample_rate"] == SR and info["orig_sample_rate"] == SR
        assert info["intervals"] == metadata[path]["intervals"]
        assert info["metadata"] == metadata[path]["metadata"]
        assert KEY_RE.match(sample["key"]), sample["key"]


def test_float32_storage(corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    features = FeatureConfig(storage_dtype="float32")
    write_shards(root, meta, tmp_path, files=["spk01/clip_00000.wav"], features=features, workers=1,
                 progress=False)
    (sample,) = by_path(helpers, tmp_path).values()
    audio, _ = sf.read(os.path.join(root, "spk01/clip_00000.wav"), dtype="float32")
    shape, fortran, dtype = npy_header(sample["spec.npy"])
    assert (shape, fortran, dtype) == ((N_MELS, 1 + len(audio) // HOP), False, np.dtype("float32"))
    np.testing.assert_allclose(sample["spec"], ref_logmel(audio), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- resampling, stereo, --with-audio


def test_resampled_and_stereo_inputs(mixed_run, mixed_corpus, helpers):
    out, _ = mixed_run
    root, meta_path = mixed_corpus
    metadata = json.loads(Path(meta_path).read_text())
    stored = by_path(helpers, out)
    assert sorted(stored) == sorted(metadata)
    index = {row["path"]: row for row in helpers.index(out)}
    seen, half_cases = set(), 0
    for path, entry in metadata.items():
        header = sf.info(os.path.join(root, path))
        orig, n = header.samplerate, header.frames
        seen.add((orig, header.channels))
        samples = ceil(Fraction(n * SR, orig))
        frames = 1 + samples // HOP
        intervals = {name: [[half_up(a, orig), half_up(b, orig)] for a, b in spans]
                     for name, spans in entry["intervals"].items()}
        half_cases += sum(Fraction(v * SR, orig).denominator == 2 for spans in entry["intervals"].values()
                          for span in spans for v in span)
        sample = stored[path]
        info = sample["info"]
        assert (info["orig_sample_rate"], info["orig_length"]) == (orig, n), path
        assert (info["samples"], info["frames"], info["sample_rate"]) == (samples, frames, SR), path
        assert info["intervals"] == intervals, path
        assert sample["spec"].shape == (N_MELS, frames), path
        row = index[path]
        assert (row["frames"], row["samples"], row["intervals"]) == (frames, samples, nonempty(intervals)), path
        assert_float16_close(sample["spec"], ref_logmel(ref_audio(os.path.join(root, path))), path)
    assert seen >= {(r, c) for r in (44100, 8000, 32000, 16000) for c in (1, 2)}, seen
    assert half_cases > 0  # some 32 kHz boundary fell on half a sample: round-half-up was exercised


def test_with_audio_flac_is_the_resampled_mono_audio(mixed_run, mixed_corpus, helpers):
    out, result = mixed_run
    root, _ = mixed_corpus
    assert result.manifest["with_audio"] is True
    exact = 0
    for path, sample in by_path(helpers, out).items():
        wav = os.path.join(root, path)
        header = sf.info(wav)
        if header.samplerate == SR and header.channels > 1:
            continue  # 16 kHz 16-bit stereo: test_stereo_16bit_16k_audio_keeps_the_downmix
        decoded, rate = sf.read(io.BytesIO(sample["audio.flac"]), dtype="float32")
        assert rate == SR and decoded.ndim == 1, path
        expected = ref_audio(wav)
        assert len(decoded) == len(expected) == sample["info"]["samples"], path
        if header.samplerate == SR and header.channels == 1 and header.subtype == "PCM_16":
            ints, _ = sf.read(io.BytesIO(sample["audio.flac"]), dtype="int16")
            np.testing.assert_array_equal(ints, sf.read(wav, dtype="int16")[0], err_msg=path)
            np.testing.assert_array_equal(decoded, expected, err_msg=path)
            exact += 1
        else:
            # lossless to 24 bits: the mono/resampled float audio, within half a 24-bit step
            np.testing.assert_allclose(decoded, expected, rtol=0, atol=2**-23, err_msg=path)
    assert exact >= 2


def test_stereo_16bit_16k_audio_keeps_the_downmix(tmp_path, helpers):
    """A 16 kHz 16-bit *stereo* file: the mono mean has 17-bit steps, so 16-bit FLAC would lose half a step."""
    left = (np.random.default_rng(4).integers(-8000, 8000, SR)).astype(np.int16)
    right = (left // 3 + 1).astype(np.int16)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), SR, subtype="PCM_16")
    out = tmp_path / "out"
    write_shards(tmp_path, None, out, with_audio=True, workers=1, progress=False)
    (sample,) = by_path(helpers, out).values()
    decoded, _ = sf.read(io.BytesIO(sample["audio.flac"]), dtype="float64")
    expected = (left.astype(np.float64) + right) / 2 / 32768
    assert np.any((left.astype(int) + right) % 2)  # odd sums exist
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=2**-23)


# --------------------------------------------------------------------------- bad input, file by file

GOOD_SECONDS = 1.0
BAD_CASES = {
    # path: (metadata entry, pattern the problem text must match)
    "bad/corrupt.wav": ({"length": 16000}, r"corrupt|unreadable|not recogni[sz]ed|format"),
    "bad/empty.wav": ({"length": 0}, r"empty|\b0 samples"),
    "bad/missing.wav": ({"length": 16000, "intervals": {"speech": [[0, 100]]}}, r"not found|missing|no such"),
    "bad/length.wav": ({"length": 16001}, r"(?s)length.*16001.*16000|16000.*16001"),
    "bad/outside.wav": ({"length": 16000, "intervals": {"speech": [[100, 16001]]}}, r"speech.*16001"),
    "bad/outside_nolen.wav": ({"intervals": {"speech": [[100, 99999]]}}, r"speech.*99999"),
    "bad/negative.wav": ({"length": 16000, "intervals": {"noise": [[-5, 100]]}}, r"noise.*-5"),
    "bad/reversed.wav": ({"length": 16000, "intervals": {"speech": [[5000, 1000]]}}, r"(?i)reversed.*|5000.*1000"),
    "bad/nan.wav": ({"length": 16000}, r"(?i)\bnan\b"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, helpers):
    """A few good demo files plus one file for every bad-input case, through the CLI with two workers."""
    root = tmp_path_factory.mktemp("bad_corpus")
    metadata = json.loads(Path(make_corpus(root, total_seconds=10, seed=3, min_seconds=2, max_seconds=4)).read_text())
    good = sorted(metadata)
    (root / "bad").mkdir()
    (root / "bad/corrupt.wav").write_bytes(b"RIFF\x00\x00garbage, not audio" * 50)
    sf.write(root / "bad/empty.wav", np.zeros(0, dtype=np.float32), SR, subtype="PCM_16")
    for name in ("length", "outside", "outside_nolen", "negative", "reversed"):
        sf.write(root / f"bad/{name}.wav", noise(GOOD_SECONDS), SR, subtype="PCM_16")
    with_nan = noise(GOOD_SECONDS)
    with_nan[1234] = np.nan
    sf.write(root / "bad/nan.wav", with_nan, SR, subtype="FLOAT")
    assert np.isnan(sf.read(root / "bad/nan.wav")[0]).sum() == 1
    metadata.update({path: entry for path, (entry, _) in BAD_CASES.items()})
    meta = write_metadata(root, metadata)
    out = root.parent / (root.name + "_out")
    # not --quiet: the run prints a line per bad file
    result = helpers.run_cli([root, meta, out, "--workers", "2", "--max-shard-files", "2"])
    return dict(root=root, out=out, result=result, good=good, manifest=helpers.manifest(out) if (out / "manifest.json").exists() else None)


@pytest.mark.slow
def test_bad_inputs_do_not_stop_the_run(bad_run, helpers):
    result = bad_run["result"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    manifest = bad_run["manifest"]
    assert manifest is not None
    assert sorted(by_path(helpers, bad_run["out"])) == bad_run["good"]
    assert sorted(row["path"] for row in helpers.index(bad_run["out"])) == bad_run["good"]
    assert manifest["totals"]["files"] == len(bad_run["good"])
    assert manifest["report"]["counts"] == {"bad": len(BAD_CASES), "filtered": 0}
    assert f"{len(BAD_CASES)} bad, 0 filtered" in result.stdout
    # shards on disk are exactly those of the manifest (a shard whose files were all bad is not listed)
    assert sorted(p.name for p in Path(bad_run["out"]).glob("shard-*.tar")) == \
        sorted(s["name"] for s in manifest["shards"])


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(BAD_CASES))
def test_bad_input_reported_by_name_with_its_problem(bad_run, path):
    manifest = bad_run["manifest"]
    assert manifest is not None, bad_run["result"].stderr
    rows = [row for row in manifest["report"]["files"] if row["path"] == path]
    assert len(rows) == 1, (path, manifest["report"]["files"])
    row = rows[0]
    assert row["kind"] == "bad"
    assert re.search(BAD_CASES[path][1], row["problem"], re.IGNORECASE), row
    # the run's stderr names the file and the problem too
    assert any(path in line and row["problem"] in line for line in bad_run["result"].stderr.splitlines())


@pytest.mark.slow
def test_report_names_files_as_in_metadata(bad_run):
    """Report paths are the metadata keys (relative), not where this machine keeps the audio."""
    manifest = bad_run["manifest"]
    assert manifest is not None
    assert [row["path"] for row in manifest["report"]["files"]] == sorted(BAD_CASES)
    assert str(bad_run["root"]) not in json.dumps(manifest["report"])


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["not_utf8", "invalid_json"])
def test_unreadable_metadata_fails_the_run_in_one_line(case, tmp_path, helpers):
    sf.write(tmp_path / "a.wav", noise(0.5), SR, subtype="PCM_16")
    meta = tmp_path / "metadata.json"
    if case == "not_utf8":
        meta.write_bytes('{"a.wav": {"metadata": {"name": "caf\u00e9"}}}'.encode("latin-1"))
        needle = "UTF-8"
    else:
        meta.write_text('{"a.wav": {"length": 8000,}}', encoding="utf-8")
        needle = "JSON"
    result = helpers.run_cli([tmp_path, meta, tmp_path / "out"])
    line = assert_one_line_error(result, str(meta), needle)
    assert result.stdout == ""
    assert not (tmp_path / "out" / "manifest.json").exists(), line


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["header", "decode"])
def test_nothing_usable_fails_with_a_clear_message(stage, tmp_path, helpers):
    """All files bad: when their headers already fail (probe) and when only decoding finds out (NaN)."""
    if stage == "header":
        (tmp_path / "x.wav").write_bytes(b"not audio at all" * 20)
        metadata = {"x.wav": {}, "gone.wav": {}}
    else:
        for name in ("n1.wav", "n2.wav"):
            audio = noise(0.5)
            audio[10] = np.nan
            sf.write(tmp_path / name, audio, SR, subtype="FLOAT")
        metadata = {"n1.wav": {}, "n2.wav": {}}
    meta = write_metadata(tmp_path, metadata)
    result = helpers.run_cli([tmp_path, meta, tmp_path / "out", "--workers", "1", "--quiet"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("spg-shard: error: ") and "nothing usable" in last, result.stderr
    assert all(name in result.stderr for name in metadata), result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_keep_filters_are_counted_as_filtered(run16k, corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    metadata = json.loads(Path(meta).read_text())
    females = sorted(p for p, e in metadata.items() if e["metadata"]["gender"] == "f")
    males = sorted(set(metadata) - set(females))
    assert females and males
    result = write_shards(root, meta, tmp_path, keep={"gender": ["f"]}, workers=1, progress=False)
    manifest = result.manifest
    assert sorted(row["path"] for row in helpers.index(tmp_path)) == females
    assert manifest["report"]["counts"] == {"bad": 0, "filtered": len(males)}
    assert [row["path"] for row in manifest["report"]["files"]] == males
    for row in manifest["report"]["files"]:
        assert row["kind"] == "filtered" and "gender" in row["problem"], row
    assert manifest["labels"]["gender"] == ["f"]
    assert manifest["totals"]["files"] == len(females)
    with pytest.raises(SpgError, match="nothing usable"):
        write_shards(root, meta, tmp_path / "none", keep={"gender": ["x"]}, workers=1, progress=False)
    with pytest.warns(DeprecationWarning, match="keep="):  # labelset={key: values} was this filter before 0.3
        again = write_shards(root, meta, tmp_path / "old", labelset={"gender": ["f"]}, workers=1, progress=False)
    assert sorted(row["path"] for row in helpers.index(tmp_path / "old")) == females
    assert again.manifest["report"]["counts"] == manifest["report"]["counts"]


# --------------------------------------------------------------------------- which files


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_files_list_instead_of_metadata_keys(corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    metadata = json.loads(Path(meta).read_text())
    keys = sorted(metadata)
    chosen = [keys[1], keys[3], keys[0]]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a subset\n{chosen[0]}\n\n{os.path.join(root, chosen[1])}\n  {chosen[2]}  \nspk01/nope.wav\n",
                       encoding="utf-8")
    out = tmp_path / "out"
    result = helpers.run_cli([root, meta, out, "--files", listing, "--workers", "1", "--quiet"])
    assert result.returncode == 0, result.stderr
    index = helpers.index(out)
    assert [row["path"] for row in index] == sorted(chosen)
    for row in index:
        assert row["intervals"] == nonempty(metadata[row["path"]]["intervals"])
        assert row["metadata"] == metadata[row["path"]]["metadata"]
    report = helpers.manifest(out)["report"]
    assert [row["path"] for row in report["files"]] == ["spk01/nope.wav"]
    assert re.search(r"not found|missing|no such", report["files"][0]["problem"], re.IGNORECASE)


def test_folder_walk_without_metadata(corpus16k, tmp_path, helpers):
    root, meta = corpus16k
    wavs = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*.wav"))
    result = write_shards(root, None, tmp_path, workers=1, progress=False)
    manifest = result.manifest
    index = helpers.index(tmp_path)
    assert [row["path"] for row in index] == wavs
    assert all(row["intervals"] == {} and row["metadata"] == {} for row in index)
    assert manifest["labels"] == {}
    assert manifest["report"] == {"counts": {"bad": 0, "filtered": 0}, "files": []}
    for path, sample in by_path(helpers, tmp_path).items():
        assert sample["info"]["intervals"] == {} and sample["info"]["metadata"] == {}
        assert sample["spec"].shape == (N_MELS, 1 + sf.info(os.path.join(root, path)).frames // HOP)


# --------------------------------------------------------------------------- manifest and index


def test_manifest_describes_the_shards_on_disk(run16k, corpus16k, helpers):
    out, result = run16k
    root, meta = corpus16k
    metadata = json.loads(Path(meta).read_text())
    manifest = helpers.manifest(out)
    assert manifest == json.loads(json.dumps(result.manifest))
    assert manifest["format_version"] == 2
    assert manifest["features"] == FeatureConfig().to_dict()
    assert manifest["with_audio"] is False
    on_disk = sorted(p.name for p in Path(out).glob("shard-*.tar"))
    assert [s["name"] for s in manifest["shards"]] == on_disk
    assert len(on_disk) == ceil(len(metadata) / 3)
    total_frames = total_files = 0
    for shard in manifest["shards"]:
        data = (Path(out) / shard["name"]).read_bytes()
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == sha256(data)
        members = helpers.read_tar(Path(out) / shard["name"])
        keys = {name.partition(".")[0] for name, _ in members}
        assert shard["files"] == len(keys) <= 3
        assert sorted(name for name, _ in members) == sorted(f"{k}.{m}" for k in keys for m in ("spec.npy", "info.msgpack"))
        frames = sum(helpers.npy(blob).shape[1] for name, blob in members if name.endswith(".spec.npy"))
        assert shard["frames"] == frames
        total_frames += frames
        total_files += shard["files"]
    seconds = sum(e["length"] / SR for e in metadata.values())
    totals = manifest["totals"]
    assert totals["files"] == total_files == len(metadata)
    assert totals["frames"] == total_frames == manifest["stats"]["frames"]
    assert totals["shards"] == len(on_disk)
    assert totals["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    assert totals["seconds"] == pytest.approx(seconds) and totals["hours"] == pytest.approx(seconds / 3600)
    assert manifest["labels"] == {
        "gender": sorted({e["metadata"]["gender"] for e in metadata.values()}),
        "speaker": sorted({e["metadata"]["speaker"] for e in metadata.values()}),
    }
    assert manifest["labels"]["gender"] == ["f", "m"]
    assert manifest["report"] == {"counts": {"bad": 0, "filtered": 0}, "files": []}


def test_manifest_stats_are_over_all_stored_frames(run16k, helpers):
    out, _ = run16k
    manifest = helpers.manifest(out)
    stacked = np.concatenate([s["spec"].astype(np.float64) for s in by_path(helpers, out).values()], axis=1)
    assert stacked.shape == (N_MELS, manifest["stats"]["frames"])
    np.testing.assert_allclose(manifest["stats"]["mean"], stacked.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(manifest["stats"]["std"], stacked.std(axis=1), rtol=1e-6, atol=1e-9)
    assert np.all(np.asarray(manifest["stats"]["std"]) > 0.1)


def test_index_rows_match_the_shards(run16k, corpus16k, helpers):
    out, _ = run16k
    _, meta = corpus16k
    metadata = json.loads(Path(meta).read_text())
    manifest = helpers.manifest(out)
    assert manifest["index"] == "index.bin"
    index = helpers.index(out)
    stored = by_path(helpers, out)
    assert [row["path"] for row in index] == sorted(metadata)
    assert len({row["key"] for row in index}) == len(index)
    for row in index:
        sample = stored[row["path"]]
        assert row["key"] == sample["key"] and row["shard"] == sample["__shard__"]
        assert row["frames"] == sample["spec"].shape[1] == sample["info"]["frames"]
        assert row["samples"] == metadata[row["path"]]["length"]
        assert sample["info"]["intervals"] == metadata[row["path"]]["intervals"]
        assert row["intervals"] == nonempty(metadata[row["path"]]["intervals"])  # the index keeps spans only
        assert row["metadata"] == metadata[row["path"]]["metadata"]
    per_shard = {s["name"]: (s["files"], s["frames"]) for s in manifest["shards"]}
    for name, (files, frames) in per_shard.items():
        rows = [r for r in index if r["shard"] == name]
        assert (len(rows), sum(r["frames"] for r in rows)) == (files, frames)


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_one_and_two_workers_write_identical_bytes(mixed_run, mixed_corpus, tmp_path, helpers):
    root, meta = mixed_corpus
    out1, _ = mixed_run
    result = write_shards(root, meta, tmp_path, workers=2, max_shard_files=4, with_audio=True, progress=False)
    assert result.shards_written == len(result.manifest["shards"]) >= 4
    one, two = helpers.output_files(out1), helpers.output_files(tmp_path)
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name


def test_parts_make_the_same_output_as_one_run(run16k, corpus16k, tmp_path, helpers):
    """--part 0/3, 1/3, 2/3 (as a job array runs them): only the last one to finish writes the manifest, and
    the three give the single run's bytes."""
    out_full, _ = run16k
    root, meta = corpus16k
    results = [write_shards(root, meta, tmp_path, workers=1, max_shard_files=3, part=(i, 3), progress=False)
               for i in range(3)]
    assert results[0].manifest is None and results[1].manifest is None and results[2].manifest is not None
    shards = sorted(p.name for p in tmp_path.glob("shard-*.tar"))
    assert sum(r.shards_written for r in results) == len(shards) == len(results[2].manifest["shards"]) >= 3
    assert results[1].headers_read == results[2].headers_read == 0  # the first part's headers serve the others
    full, parts = helpers.output_files(out_full), helpers.output_files(tmp_path)
    assert sorted(full) == sorted(parts)
    for name in full:
        assert full[name] == parts[name], name


# --------------------------------------------------------------------------- resume and refusal


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_then_rerun_finishes_the_same_job(tmp_path, helpers):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=120, seed=5, rates=(44100,), min_seconds=1, max_seconds=3)
    flags = ["--workers", "1", "--max-shard-files", "2", "--quiet"]
    ref = tmp_path / "reference"  # the uninterrupted run (same arguments as the CLI's below)
    write_shards(root, meta, ref, workers=1, max_shard_files=2, progress=False)
    reference = helpers.output_files(ref)
    plan_size = len(helpers.manifest(ref)["shards"])
    assert plan_size >= 20

    for attempt in range(3):  # a retry only if the run finished before the kill landed
        out = tmp_path / f"out{attempt}"
        log = open(tmp_path / f"killed{attempt}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "spgdataset.write.cli", str(root), meta, str(out), *flags],
                                stdout=log, stderr=log)
        first_seen = {}  # shard name -> its size the first time it was visible
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            names = [n for n in os.listdir(out) if SHARD_RE.match(n)] if out.is_dir() else []
            for name in names:
                first_seen.setdefault(name, os.path.getsize(out / name))
            if len(names) >= 2:  # shard 1 renamed means shard 0's state record is complete
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.kill()
        proc.wait()
        log.close()
        if proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists():
            break
    else:
        pytest.fail("the run always finished before it could be killed")
    print(f"killed on attempt {attempt} with {len(first_seen)} shard(s) in place")
    assert first_seen, "no shard appeared before the deadline"

    # what the killed run left: only complete shards under shard-*.tar, and state records that match them
    left = sorted(n for n in os.listdir(out) if SHARD_RE.match(n))
    assert 2 <= len(left) < plan_size
    for name in left:
        assert (out / name).read_bytes() == reference[name], name
    for name, size in first_seen.items():
        assert size == len(reference[name]), f"{name} was visible while partial ({size} bytes)"
    records = [p for p in (out / ".spg-state").iterdir() if p.name.endswith(".tar.msgpack") and not p.name.startswith(".")]
    for path in records:
        record = unpack(path.read_bytes())
        if record["files"]:
            data = (out / record["name"]).read_bytes()
            assert (len(data), sha256(data)) == (record["bytes"], record["sha256"]), record["name"]

    rerun = helpers.run_cli([root, meta, out, *flags])
    assert rerun.returncode == 0, rerun.stderr
    match = SUMMARY_RE.search(rerun.stdout)
    assert match, rerun.stdout
    written, reused = map(int, match.groups())
    assert reused >= 1 and written >= 1 and written + reused == plan_size, rerun.stdout
    resumed = helpers.output_files(out)
    assert sorted(resumed) == sorted(reference)
    for name in reference:
        assert resumed[name] == reference[name], name
    assert no_temporaries(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failed_shard_write_stops_the_run_and_a_rerun_finishes(workers, tmp_path, helpers, monkeypatch):
    """A shard task that fails (here a full disk on the third shard) fails the run with its error; no task
    starts after it (one worker: exactly the two shards before it are there; two: the other worker's shard
    in flight may finish too), and the rerun gives the uninterrupted output."""
    from spgdataset.write import tasks

    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=16, seed=3, min_seconds=1.5, max_seconds=2.5)
    ref = tmp_path / "reference"
    write_shards(root, meta, ref, workers=workers, max_shard_files=1, progress=False)
    reference = helpers.output_files(ref)
    shard_count = len([n for n in reference if SHARD_RE.match(n)])
    assert shard_count >= 5

    real = tasks.write_shard

    def full_disk_on_third(output_dir, k, results, dry_run=False):
        if k == 2:
            raise OSError(28, "No space left on device")
        return real(output_dir, k, results, dry_run)

    monkeypatch.setattr(tasks, "write_shard", full_disk_on_third)  # forked workers inherit the patch
    out = tmp_path / "out"
    with pytest.raises(OSError, match="No space left"):
        write_shards(root, meta, out, workers=workers, max_shard_files=1, progress=False)
    left = sorted(n for n in os.listdir(out) if SHARD_RE.match(n))
    if workers == 1:
        assert left == ["shard-000000.tar", "shard-000001.tar"]
    else:
        assert "shard-000002.tar" not in left and len(left) < shard_count - 1, left
    assert not (out / "manifest.json").exists()

    monkeypatch.setattr(tasks, "write_shard", real)
    rerun = write_shards(root, meta, out, workers=workers, max_shard_files=1, progress=False)
    assert rerun.shards_reused == len(left)
    assert helpers.output_files(out) == reference


@pytest.mark.parametrize("killed_while", ["writing_shard", "writing_record"])
def test_rerun_removes_temporaries_of_a_killed_run(killed_while, tmp_path, helpers):
    """The states SIGKILL can leave inside write_bytes_atomic: a half-written temporary tar (no record yet),
    or a renamed tar whose state record was being written. The rerun must finish and leave no temporaries."""
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=6, seed=9, min_seconds=1.5, max_seconds=2.5)
    out = tmp_path / "out"
    write_shards(root, meta, out, workers=1, max_shard_files=1, progress=False)
    expected = helpers.output_files(out)
    assert len([n for n in expected if SHARD_RE.match(n)]) >= 3
    (out / "manifest.json").unlink()
    (out / "index.bin").unlink()
    record = out / ".spg-state" / "shard-000001.tar.msgpack"
    if killed_while == "writing_shard":
        (out / ".shard-000001.tar.tmp4242").write_bytes(expected["shard-000001.tar"][:5000])
        (out / "shard-000001.tar").unlink()
        record.unlink()
    else:
        (out / ".spg-state" / ".shard-000001.tar.msgpack.tmp4242").write_bytes(record.read_bytes()[:100])
        record.unlink()
    result = write_shards(root, meta, out, workers=1, max_shard_files=1, progress=False)
    assert result.shards_written == 1 and result.shards_reused == len(result.manifest["shards"]) - 1
    assert helpers.output_files(out) == expected
    assert no_temporaries(out) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_different_job_in_the_same_folder_is_refused_unless_overwrite(tmp_path, helpers):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=6, seed=2, min_seconds=1.5, max_seconds=2.5)
    out = tmp_path / "out"
    first = write_shards(root, meta, out, workers=1, max_shard_files=1, progress=False)
    assert len(first.manifest["shards"]) >= 3
    before = helpers.output_files(out)

    refused = helpers.run_cli([root, meta, out, "--n-mels", "64", "--workers", "1", "--quiet"])
    line = assert_one_line_error(refused, str(out))
    assert "different job" in line and "--overwrite" in line
    assert helpers.output_files(out) == before

    with pytest.raises(SpgError, match="different job"):  # other inputs count as a different job too
        write_shards(root, meta, out, files=sorted(json.loads(Path(meta).read_text()))[:1], workers=1,
                     max_shard_files=1, progress=False)
    assert helpers.output_files(out) == before

    second = write_shards(root, meta, out, features=FeatureConfig(n_mels=64), workers=1, overwrite=True,
                          progress=False)
    assert second.manifest["features"]["n_mels"] == 64
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar"]  # the old three are gone
    assert all(s["spec"].shape[0] == 64 for s in by_path(helpers, out).values())
    assert helpers.manifest(out)["totals"]["files"] == first.manifest["totals"]["files"]
    # and the same job again is a resume, not a refusal
    again = write_shards(root, meta, out, features=FeatureConfig(n_mels=64), workers=1, progress=False)
    assert (again.shards_written, again.shards_reused) == (0, 1)
