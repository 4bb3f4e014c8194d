"""The frame, mask and window rules (spgdataset.frames, spgdataset.windows) against their definitions.

Frame t of a centred STFT is centred at sample t * hop; a clip of n samples has T = 1 + n // hop frames;
frame t lies in the half-open interval [start, stop) iff start <= t * hop < stop. Each rule is checked
at the boundaries by hand and against a brute-force loop over random cases.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil, floor

import numpy as np
import pytest
import torch
import torchaudio

from spgdataset.rules.frames import (
    frame_span,
    interval_mask,
    num_frames,
    resampled_length,
    rescale_intervals,
    rescale_sample,
    union_mask,
)
from spgdataset.rules.windows import WindowRule, kept_starts, window_content, window_frames, window_starts

HOP = 160


def brute_mask(spans, frames, hop=HOP):
    """The rule itself: frame t is in [start, stop) iff start <= t * hop < stop."""
    return np.array([any(a <= t * hop < b for a, b in spans) for t in range(frames)], dtype=bool)


def half_up(position, orig, new):
    """round(position * new / orig) with halves rounded up, in exact arithmetic."""
    return floor(Fraction(position * new, orig) + Fraction(1, 2))


# --------------------------------------------------------------------------- frame count


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (159, 1), (160, 2), (161, 2), (319, 2), (320, 3),
                                         (16000, 101), (16159, 101), (16160, 102)])
def test_num_frames(n, expected):
    assert num_frames(n, HOP) == expected


@pytest.mark.parametrize("n", [201, 399, 400, 16000, 16159, 16160, 16161, 31999])
def test_num_frames_is_torchaudio_frame_count(n):
    """T = 1 + n // hop is what a centred MelSpectrogram really returns."""
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=HOP, n_mels=80)
    assert mel(torch.zeros(n)).shape == (80, num_frames(n, HOP))


# --------------------------------------------------------------------------- the mask rule at its edges


@pytest.mark.parametrize("start, stop, inside", [
    (320, 960, [2, 3, 4, 5]),      # start exactly on frame 2's centre: frame 2 in
    (319, 960, [2, 3, 4, 5]),      # one sample before a centre: same frames (frame 1 at 160 is before)
    (321, 960, [3, 4, 5]),         # one sample after a centre: frame 2 out
    (320, 640, [2, 3]),            # stop exactly on frame 4's centre: half-open, frame 4 out
    (320, 641, [2, 3, 4]),         # one sample past the centre: frame 4 in
    (320, 639, [2, 3]),            # one sample before the centre: frame 4 out
    (315, 325, [2]),               # shorter than a hop, around a centre: that one frame
    (321, 479, []),                # shorter than a hop, between centres: no frame at all
    (330, 340, []),
    (480, 481, [3]),               # a single sample on a centre
    (0, 1, [0]),                   # the first sample is frame 0's centre
    (1, 160, []),
])
def test_mask_rule_at_interval_boundaries(start, stop, inside):
    frames = 12
    expected = np.zeros(frames, dtype=bool)
    expected[inside] = True
    mask = interval_mask([[start, stop]], frames, HOP)
    assert mask.dtype == bool and mask.shape == (frames,)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask, brute_mask([[start, stop]], frames))
    first, last = frame_span(start, stop, HOP)
    assert list(range(first, last)) == inside


def test_mask_clips_at_file_end():
    """10 frames cover centres 0..1440: an interval running past the end marks up to the last frame."""
    frames = 10
    np.testing.assert_array_equal(np.flatnonzero(interval_mask([[1400, 5000]], frames, HOP)), [9])
    np.testing.assert_array_equal(np.flatnonzero(interval_mask([[1440, 1441]], frames, HOP)), [9])
    np.testing.assert_array_equal(np.flatnonzero(interval_mask([[1441, 9999]], frames, HOP)), [])
    assert not interval_mask([[3000, 4000]], frames, HOP).any()
    assert interval_mask([[0, 10**9]], frames, HOP).all()


def test_mask_matches_brute_force_on_random_spans():
    rng = np.random.default_rng(1)
    for _ in range(400):
        hop = int(rng.choice([1, 7, 160, 256]))
        frames = int(rng.integers(1, 60))
        spans = []
        for _ in range(int(rng.integers(0, 5))):
            start = int(rng.integers(0, frames * hop + 3 * hop))
            stop = start + int(rng.integers(1, 4 * hop + 2))
            spans.append([start, stop])
        np.testing.assert_array_equal(interval_mask(spans, frames, hop), brute_mask(spans, frames, hop),
                                      err_msg=f"hop={hop} frames={frames} spans={spans}")


def test_union_mask_takes_named_intervals_only():
    intervals = {"speech": [[0, 320]], "noise": [[800, 1000]], "music": [[1600, 1700]]}
    frames = 12
    np.testing.assert_array_equal(np.flatnonzero(union_mask(intervals, ["speech", "noise"], frames, HOP)),
                                  [0, 1, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(union_mask(intervals, ["absent"], frames, HOP)), [])
    np.testing.assert_array_equal(union_mask(intervals, ["speech", "noise", "music"], frames, HOP),
                                  brute_mask([s for v in intervals.values() for s in v], frames))


# --------------------------------------------------------------------------- resampling positions and lengths


@pytest.mark.parametrize("orig", [44100, 8000, 32000, 22050, 48000])
def test_rescale_sample_is_round_half_up(orig):
    rng = np.random.default_rng(orig)
    positions = [0, 1, 2, 3, 5, 441, 44100, orig, orig - 1, orig + 1] + [int(p) for p in rng.integers(0, 10**7, 300)]
    for p in positions:
        assert rescale_sample(p, orig, 16000) == half_up(p, orig, 16000), (p, orig)


def test_rescale_intervals_44k1_and_8k_to_16k():
    intervals = {"speech": [[0, 441], [882, 44100], [1000, 1003]], "noise": [[7, 8]], "empty_name": []}
    out = rescale_intervals(intervals, 44100, 16000)
    assert out == {"speech": [[0, 160], [320, 16000], [363, 364]], "noise": [[3, 3]], "empty_name": []}
    # 1000 * 16000 / 44100 = 362.8 -> 363; 1003 -> 363.9 -> 364; 7 -> 2.54 -> 3; 8 -> 2.90 -> 3
    out8 = rescale_intervals({"speech": [[0, 1], [3, 8000], [12345, 67891]]}, 8000, 16000)
    assert out8 == {"speech": [[0, 2], [6, 16000], [24690, 135782]]}


def test_rescale_intervals_rounds_halves_up():
    """32 kHz -> 16 kHz: odd positions fall exactly on half a sample and go up."""
    out = rescale_intervals({"a": [[1, 3], [5, 6], [99, 101]]}, 32000, 16000)
    assert out == {"a": [[1, 2], [3, 3], [50, 51]]}


def test_rescale_intervals_random_against_exact_arithmetic():
    rng = np.random.default_rng(5)
    for orig in (44100, 8000, 32000, 11025, 48000, 16000):
        spans = sorted([sorted(int(v) for v in rng.integers(0, 10**6, 2)) for _ in range(50)])
        spans = [[a, b + 1] for a, b in spans]
        out = rescale_intervals({"x": spans, "y": spans[:3]}, orig, 16000)
        assert set(out) == {"x", "y"}
        assert out["x"] == [[half_up(a, orig, 16000), half_up(b, orig, 16000)] for a, b in spans]
        assert all(type(v) is int for span in out["x"] for v in span)


def test_rescale_intervals_same_rate_is_identity_copy():
    intervals = {"speech": [[3, 17], [160, 161]]}
    out = rescale_intervals(intervals, 16000, 16000)
    assert out == intervals
    out["speech"][0][0] = 99
    assert intervals["speech"][0][0] == 3


@pytest.mark.parametrize("orig", [44100, 8000, 32000, 22050])
def test_resampled_length_is_ceil_and_matches_torchaudio(orig):
    rng = np.random.default_rng(orig)
    resample = torchaudio.transforms.Resample(orig, 16000)
    for n in [1, 2, 3, 441, orig - 1, orig, orig + 1] + [int(v) for v in rng.integers(1, 3 * orig, 8)]:
        expected = ceil(Fraction(n * 16000, orig))
        assert resampled_length(n, orig, 16000) == expected, (n, orig)
        assert resample(torch.zeros(n)).shape[-1] == expected, (n, orig)
        # an interval ending at the file's last sample never ends after the resampled audio
        assert rescale_sample(n, orig, 16000) <= expected


# --------------------------------------------------------------------------- windows


def test_window_frames():
    assert window_frames(1.92, 16000, 160) == 192
    assert window_frames(0.1, 16000, 160) == 10
    assert window_frames(1.0, 22050, 256) == 86  # 86.13
    with pytest.raises(ValueError):
        window_frames(0.001, 16000, 160)


def brute_starts(frames, window, step):
    return [s for s in range(0, frames, step) if s + window <= frames]


@pytest.mark.parametrize("frames, window, step, expected", [
    (191, 192, 10, []), (192, 192, 10, [0]), (201, 192, 10, [0]), (202, 192, 10, [0, 10]),
    (10, 3, 4, [0, 4]), (11, 3, 4, [0, 4, 8]), (0, 1, 1, []), (1, 1, 1, [0]),
])
def test_window_starts_examples(frames, window, step, expected):
    assert window_starts(frames, window, step).tolist() == expected


def test_window_starts_and_content_random():
    rng = np.random.default_rng(2)
    for _ in range(300):
        frames, window, step = int(rng.integers(0, 400)), int(rng.integers(1, 200)), int(rng.integers(1, 30))
        starts = window_starts(frames, window, step)
        assert starts.tolist() == brute_starts(frames, window, step)
        mask = rng.random(frames) < 0.4
        np.testing.assert_array_equal(window_content(mask, starts, window),
                                      [int(mask[s:s + window].sum()) for s in starts.tolist()])


def brute_kept(frames, intervals, window, step, hop, names, ratio, pad_short=False):
    """Definition from docs/design.md: files without intervals (or ratio 0) keep every window; others keep a
    window when at least ratio * W of its frames are in the union of `names` (padding is not content)."""
    if pad_short and 0 < frames < window:
        starts = [0]
    else:
        starts = brute_starts(frames, window, step)
    if not intervals or ratio <= 0:
        return starts
    spans = [s for name in names for s in intervals.get(name, [])]
    kept = []
    for s in starts:
        content = sum(1 for t in range(s, s + window) if t < frames and any(a <= t * hop < b for a, b in spans))
        if content >= ratio * window:
            kept.append(s)
    return kept


def test_content_ratio_filter_matches_brute_force():
    rng = np.random.default_rng(3)
    kept_any = dropped_any = 0
    for case in range(400):
        hop = int(rng.choice([160, 100, 1]))
        frames = int(rng.integers(1, 300))
        window, step = int(rng.integers(1, 80)), int(rng.integers(1, 12))
        length = frames * hop
        intervals = {}
        if case % 5:  # one case in five has no intervals at all
            for name in ("speech", "noise"):
                spans, pos = [], int(rng.integers(0, max(length // 3, 1)))
                while pos < length and len(spans) < 6:
                    stop = pos + int(rng.integers(1, max(length // 4, 2)))
                    spans.append([pos, stop])
                    pos = stop + int(rng.integers(1, max(length // 5, 2)))
                if spans:
                    intervals[name] = spans
        names = [["speech"], ["speech", "noise"], ["noise"], ["absent"]][case % 4]
        ratio = float(rng.choice([0.0, 0.1, 0.5, 0.75, 1.0, float(rng.random())]))
        pad_short = bool(case % 3 == 0)
        got = kept_starts(WindowRule(window, step, hop, tuple(names), ratio, pad_short), frames, intervals).tolist()
        expected = brute_kept(frames, intervals, window, step, hop, names, ratio, pad_short)
        assert got == expected, dict(frames=frames, intervals=intervals, window=window, step=step, hop=hop,
                                     names=names, ratio=ratio, pad_short=pad_short)
        all_starts = brute_kept(frames, {}, window, step, hop, names, 0.0, pad_short)
        kept_any += len(expected)
        dropped_any += len(all_starts) - len(expected)
    assert kept_any > 100 and dropped_any > 100  # the random cases exercise both outcomes


def test_content_ratio_examples():
    # 30 frames, hop 160, speech over frames 5..14 (samples [800, 2400)), W=10, S=5
    intervals = {"speech": [[800, 2400]]}
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 1.0), 30, intervals).tolist() == [5]
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.5), 30, intervals).tolist() == [0, 5, 10]
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.0), 30, intervals).tolist() == [0, 5, 10, 15, 20]
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 1.0), 30, None).tolist() == [0, 5, 10, 15, 20]
    assert kept_starts(WindowRule(10, 5, HOP, ("noise",), 0.1), 30, intervals).tolist() == []
    # a stop one sample later reaches frame 15 (centre 2400): window 10 gets 6/10
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.6), 30, {"speech": [[800, 2401]]}).tolist() == [5, 10]
    # short file: nothing, or one padded window whose padding is not content
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.1), 6, intervals).tolist() == []
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.6, True), 6, {"speech": [[0, 10**6]]}).tolist() == [0]
    assert kept_starts(WindowRule(10, 5, HOP, ("speech",), 0.7, True), 6, {"speech": [[0, 10**6]]}).tolist() == []


@pytest.mark.parametrize("pad_short", [False, True])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("names", [("speech",), ("speech", "noise"), ()])
def test_count_kept_equals_the_per_file_rule(pad_short, ratio, names):
    """The vectorised count behind len() agrees with kept_starts file by file, overlaps and edges included."""
    from spgdataset.rules.windows import count_kept

    rng = np.random.default_rng(len(names) * 10 + int(ratio * 10) + pad_short)
    hop, window, step = 160, 40, 7
    frames, intervals = [], []
    for _ in range(300):
        n = int(rng.integers(0, 200))
        frames.append(n)
        kind = rng.integers(0, 4)
        if kind == 0:
            intervals.append({})
        else:
            spans = {}
            for name in ("speech", "noise", "music"):
                cuts = np.sort(rng.integers(0, max(n, 1) * hop + 3 * hop, size=2 * int(rng.integers(0, 5))))
                spans[name] = [[int(a), int(b)] for a, b in cuts.reshape(-1, 2) if a < b]
            intervals.append(spans)
    rule = WindowRule(window, step, hop, names, ratio, pad_short)
    got = count_kept(rule, frames, intervals)
    expected = [len(kept_starts(rule, n, iv)) for n, iv in zip(frames, intervals)]
    assert got.tolist() == expected


@pytest.mark.parametrize("seed", range(6))
def test_columnar_counts_in_small_blocks_equal_the_per_file_rule(seed):
    """count_kept_spans, the columnar count behind len() at any scale, against kept_starts file by file, with
    blocks of a few files and windows (every block edge is crossed) and steps longer, shorter and dividing
    the window."""
    from spgdataset.rules.windows import Spans, count_kept_spans

    rng = np.random.default_rng(seed)
    hop = int(rng.choice([80, 160, 441]))
    window, step = [(40, 7), (40, 10), (12, 30), (25, 25), (9, 1)][seed % 5]
    ratio, pad_short = float(rng.choice([0.0, 0.2, 0.5, 1.0])), bool(seed % 2)
    frames = rng.integers(1, 160, size=120)
    annotated = rng.random(120) < 0.8
    per_file = [sorted(map(tuple, rng.integers(0, int(f) * hop + 2 * hop, size=(int(rng.integers(0, 5)), 2))))
                for f in frames]
    per_file = [[(min(a, b), max(a, b)) for a, b in spans] if ann else [] for spans, ann in zip(per_file, annotated)]
    sizes = np.array([len(s) for s in per_file])
    lo = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    edges = np.array([s for spans in per_file for s in spans], dtype=np.int64).reshape(-1, 2)
    content = [Spans(lo, lo + sizes, edges[:, 0], edges[:, 1])]
    rule = WindowRule(window, step, hop, ("speech",), ratio, pad_short)
    got = count_kept_spans(rule, frames, annotated, content, block_files=int(rng.integers(1, 9)),
                           block_windows=int(rng.integers(1, 30)))
    for i, f in enumerate(frames.tolist()):
        intervals = {"speech": [list(s) for s in per_file[i]]} if annotated[i] else {}
        want = len(kept_starts(rule, f, intervals))
        assert got[i] == want, (i, f, intervals, window, step, hop, ratio, pad_short)


def test_a_span_before_or_after_the_file_marks_no_frame():
    """Spans from an untrusted index may lie outside the file: a negative stop must not wrap around to the end."""
    assert not interval_mask([[-5000, -1000]], 100, 160).any()
    assert not interval_mask([[100 * 160, 200 * 160]], 100, 160).any()
    mask = interval_mask([[-5000, 1600]], 100, 160)
    assert mask[:10].all() and not mask[10:].any()
