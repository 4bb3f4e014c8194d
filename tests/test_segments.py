"""Long files stored in segments give the windows of the whole file: the same (path, start) multiset, the same
frames, masks and audio in each, the same len(), splits and statistics.

Segments are made short here (2.03 s owned, 0.5 s overlap: offsets that are not multiples of the window step)
so that files of a few seconds cross several segment boundaries.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from spgdataset import SpectrogramDataset, write_shards
from tests.helpers import index_rows

SEGMENTS = (2.03, 0.5)  # seconds owned, seconds of overlap
WINDOWS = dict(window_size_sec=0.4, window_offset_sec=0.1, content_intervals=["speech"], window_content_ratio=0.5,
               output_configuration={"masks": ["speech", "noise"], "audio": True}, normalize=False, shuffle=False)


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    """The same corpus written whole and in segments."""
    root = tmp_path_factory.mktemp("long")
    audio, metadata = root / "audio", {}
    audio.mkdir()
    rng = np.random.default_rng(3)
    for name, seconds, rate, channels in (("a.wav", 7.3, 16000, 1), ("b.wav", 5.01, 44100, 2),
                                          ("c.wav", 2.4, 16000, 1), ("d.flac", 9.0, 16000, 1)):
        frames = int(seconds * rate)
        sf.write(str(audio / name), rng.normal(0, 0.1, (frames, channels)).astype(np.float32), rate, subtype="PCM_16")
        speech = [[int(s * rate), int(e * rate)] for s, e in ((0.3, 1.9), (2.0, 2.15), (min(3.1, seconds - 0.3), seconds - 0.2))]
        metadata[name] = {"intervals": {"speech": speech, "noise": [[0, int(0.5 * rate)]]},
                          "metadata": {"speaker": name[0]}}
    meta = root / "metadata.json"
    meta.write_text(json.dumps(metadata))
    whole = write_shards(audio, meta, root / "whole", with_audio=True, workers=1, progress=False)
    parts = write_shards(audio, meta, root / "segments", with_audio=True, workers=1, progress=False,
                         max_shard_files=3, segments=SEGMENTS)
    return root, whole, parts


def by_window(ds):
    """{(path, start in the file): item} over one epoch, and how often each came."""
    items = list(ds)
    return {(i["path"], int(i["start"])): i for i in items}, Counter((i["path"], int(i["start"])) for i in items)


def test_long_files_are_stored_in_segments_across_shards(shard_sets):
    root, whole, parts = shard_sets
    rows = index_rows(root / "segments")
    a = [r for r in rows if r["path"] == "a.wav"]
    assert [r["offset"] for r in a] == [0, 203, 406, 609] and [r["owned"] for r in a] == [203, 203, 203, 122]
    assert [r["frames"] for r in a] == [253, 253, 253, 122] and len({r["shard"] for r in a}) > 1
    assert [r for r in rows if r["path"] == "c.wav"][0]["offset"] == 0  # short: one sample, owning everything
    assert parts.manifest["segments"] == {"frames": 203, "overlap": 50}
    assert parts.manifest["format_version"] == 3  # readers before segments refuse the set rather than misread it
    assert "segments" not in whole.manifest and whole.manifest["format_version"] == 2
    assert parts.manifest["totals"]["seconds"] == pytest.approx(whole.manifest["totals"]["seconds"])
    for stat in ("mean", "std"):  # owned frames only: the overlaps count once
        np.testing.assert_allclose(parts.manifest["stats"][stat], whole.manifest["stats"][stat], rtol=1e-5)
    assert parts.manifest["stats"]["frames"] == whole.manifest["stats"]["frames"]


def test_windows_across_segment_boundaries_are_the_whole_files_windows(shard_sets):
    root, _, _ = shard_sets
    whole, parts = SpectrogramDataset(str(root / "whole"), **WINDOWS), SpectrogramDataset(str(root / "segments"), **WINDOWS)
    assert len(parts) == len(whole) and parts.num_windows() == whole.num_windows() > 0
    path_of = {r["key"]: r["path"] for r in index_rows(root / "whole") + index_rows(root / "segments")}
    expected = Counter((path_of[k], s) for k, s in whole.windows())
    assert Counter((path_of[k], s) for k, s in parts.windows()) == expected
    assert max(expected.values()) == 1
    (a, seen_a), (b, seen_b) = by_window(whole), by_window(parts)
    assert seen_a == expected and seen_b == expected  # each window once, where len() said
    crossing = [w for w in a if w[0] == "a.wav" and w[1] < 203 < w[1] + 40]
    assert crossing, "no window crosses the first segment boundary"
    for window in a:
        x, y = a[window], b[window]
        exact = window[0] != "b.wav"  # b is resampled: the segments' resampler sums in another order
        for name in ("speech", "noise"):
            assert torch.equal(x["masks"][name], y["masks"][name]), (window, name)
        if exact:
            assert torch.equal(x["spectrogram"], y["spectrogram"]) and torch.equal(x["audio"], y["audio"]), window
        else:
            torch.testing.assert_close(y["spectrogram"], x["spectrogram"], rtol=2**-10, atol=2**-14)
            torch.testing.assert_close(y["audio"], x["audio"], rtol=0, atol=2**-15)


def test_splits_and_parts_see_a_long_file_as_one(shard_sets):
    root, _, _ = shard_sets
    for subset in (0, 1):
        options = dict(WINDOWS, split=(0.5, 0.5), subset=subset, split_key="speaker")
        whole = {w[0] for w in by_window(SpectrogramDataset(str(root / "whole"), **options))[1]}
        parts = {w[0] for w in by_window(SpectrogramDataset(str(root / "segments"), **options))[1]}
        assert whole == parts and whole  # both subsets hold files


def test_a_window_longer_than_the_overlap_is_refused(shard_sets):
    root, _, _ = shard_sets
    with pytest.raises(ValueError, match="overlap by 50 frames"):
        SpectrogramDataset(str(root / "segments"), **dict(WINDOWS, window_size_sec=0.6))


def test_the_summary_counts_a_long_file_once(shard_sets):
    root, _, _ = shard_sets
    whole, parts = SpectrogramDataset(str(root / "whole"), **WINDOWS), SpectrogramDataset(str(root / "segments"), **WINDOWS)
    for mine, theirs in zip(parts.summary().subsets, whole.summary().subsets):  # files, hours, windows per subset
        assert mine == dict(theirs, hours=pytest.approx(theirs["hours"], rel=1e-12))
    assert repr(parts).replace("segments", "whole") == repr(whole)


@pytest.mark.slow
def test_segments_are_the_same_with_two_workers_and_in_parts(shard_sets, tmp_path, helpers):
    root, _, _ = shard_sets
    options = dict(with_audio=True, progress=False, max_shard_files=3, segments=SEGMENTS)
    write_shards(root / "audio", root / "metadata.json", tmp_path / "two", workers=2, **options)
    for i in range(3):
        write_shards(root / "audio", root / "metadata.json", tmp_path / "parts", workers=1, part=(i, 3), **options)
    one = helpers.output_files(root / "segments")
    assert helpers.output_files(tmp_path / "two") == one and helpers.output_files(tmp_path / "parts") == one


@pytest.mark.slow
def test_a_run_killed_between_the_segments_of_a_long_file_resumes_to_the_same_shards(tmp_path, helpers):
    """A real long file (6 minutes: two segments at the default 5 minutes + 30 s), one segment per shard."""
    root = tmp_path / "audio"
    root.mkdir()
    rng = np.random.default_rng(7)
    sf.write(str(root / "long.wav"), rng.normal(0, 0.05, 16000 * 360).astype(np.float32), 16000, subtype="PCM_16")
    for i in range(6):
        sf.write(str(root / f"short{i}.wav"), rng.normal(0, 0.1, 16000 * 3).astype(np.float32), 16000,
                 subtype="PCM_16")
    write_shards(root, None, tmp_path / "reference", workers=1, max_shard_files=1, progress=False)
    reference = helpers.output_files(tmp_path / "reference")
    assert [r["offset"] for r in index_rows(tmp_path / "reference") if r["path"] == "long.wav"] == [0, 30000]
    flags = ["--workers", "1", "--max-shard-files", "1", "--quiet"]
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spgdataset.write.cli", str(root), str(out), *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "shard-000000.tar").exists():  # the long file's first segment is written (its second, likely not)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists(), "the run was not killed"
    rerun = helpers.run_cli([root, out, *flags])
    assert rerun.returncode == 0, rerun.stderr
    assert helpers.output_files(out) == reference


@pytest.mark.slow
def test_segment_settings_from_the_command_line(shard_sets, tmp_path, helpers):
    root, _, _ = shard_sets
    done = helpers.run_cli([root / "audio", root / "metadata.json", tmp_path / "cli", "--with-audio", "--workers", "1",
                            "--max-shard-files", "3", "--segment-sec", "2.03", "--segment-overlap-sec", "0.5"])
    assert done.returncode == 0, done.stderr
    assert helpers.output_files(tmp_path / "cli") == helpers.output_files(root / "segments")
    bad = helpers.run_cli([root / "audio", tmp_path / "bad", "--segment-overlap-sec", "-1"])
    assert bad.returncode == 2 and "no negative overlap" in bad.stderr.strip().splitlines()[-1], bad.stderr


def test_a_tail_within_the_overlap_belongs_to_the_segment_before(tmp_path):
    """4.06 s at 16 kHz is 64,960 samples, 407 frames: segments of 203 frames would leave a last one of one frame
    and no sample (it starts at sample 64,960). The segment before holds that frame in its overlap and owns it."""
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(str(audio / "a.wav"), np.random.default_rng(0).normal(0, 0.1, 64960).astype(np.float32), 16000,
             subtype="PCM_16")
    write_shards(audio, None, tmp_path / "whole", with_audio=True, workers=1, progress=False)
    write_shards(audio, None, tmp_path / "parts", with_audio=True, workers=1, progress=False, segments=SEGMENTS)
    rows = index_rows(tmp_path / "parts")
    assert [(r["offset"], r["owned"], r["frames"]) for r in rows] == [(0, 203, 253), (203, 204, 204)]
    assert all(r["samples"] > 0 for r in rows)
    kwargs = dict(window_size_sec=0.4, window_offset_sec=0.1, output_configuration={"audio": True},
                  normalize=False, shuffle=False)
    whole, _ = by_window(SpectrogramDataset(str(tmp_path / "whole"), **kwargs))
    parts, counts = by_window(SpectrogramDataset(str(tmp_path / "parts"), **kwargs))
    assert parts.keys() == whole.keys() and set(counts.values()) == {1}
    for key, item in whole.items():
        assert torch.equal(parts[key]["spectrogram"], item["spectrogram"]) and torch.equal(parts[key]["audio"],
                                                                                        item["audio"])
