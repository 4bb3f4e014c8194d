"""The frame-label rule (spgdataset.rules.framelabels) against vak's own function, copied below as vak 1.1.0 has it.

vak finds each boundary's bin by np.argmin over float seconds; the rule here finds it in exact integers. Where no
boundary lies exactly half-way between two frame centres the two must agree; at exactly half-way the rule takes
the earlier frame (argmin's first), checked by hand. A long file's segments (each holding the intervals cut to its
samples, as the writer cuts them) must give the whole file's labels.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest

from spgdataset.rules.framelabels import (
    frame_labels,
    labelmap_problem,
    labelmap,
    merge_labelmaps,
    nearest_frame,
    reaching_intervals,
)


def vak_to_map(labelset: set, map_background=True, background_label="background") -> dict:
    """vak.common.labels.to_map, verbatim."""
    labellist = []
    if map_background is True:
        labellist.append(background_label)
    labellist.extend(sorted(list(labelset)))
    return dict(zip(labellist, range(len(labellist))))


def vak_from_segments(labels_int, onsets_s, offsets_s, time_bins, background_label=0):
    """vak.transforms.frame_labels.functional.from_segments, verbatim (int8 as in vak)."""
    label_vec = np.ones((time_bins.shape[-1],), dtype="int8") * background_label
    onset_inds = [np.argmin(np.abs(time_bins - onset)) for onset in onsets_s]
    offset_inds = [np.argmin(np.abs(time_bins - offset)) for offset in offsets_s]
    for label, onset, offset in zip(labels_int, onset_inds, offset_inds):
        label_vec[onset : offset + 1] = label
    return label_vec


def vak_labels(intervals: Dict[str, List[List[int]]], labels: Dict[str, int], frames: int, hop: int,
               rate: int) -> np.ndarray:
    """vak's labels of centred frames (time bins t * hop / rate), the intervals in onset order (ties: label order)."""
    spans = sorted((a, labels[name], b) for name, pairs in intervals.items() if name in labels for a, b in pairs
                   if b > a)
    bins = np.arange(frames) * hop / rate
    return vak_from_segments([n for _, n, _ in spans], [a / rate for a, _, _ in spans], [b / rate for _, _, b in spans],
                             bins).astype(np.int64)


def cut(intervals: Dict[str, List[List[int]]], shift: int, samples: int) -> Dict[str, List[List[int]]]:
    """A segment's intervals as write/featurize.py stores them: seen from `shift`, cut to [0, samples)."""
    return {name: [[max(a - shift, 0), min(b - shift, samples)] for a, b in spans if b > shift and a < shift + samples]
            for name, spans in intervals.items()}


def segments(samples: int, hop: int, owned: int, overlap: int) -> List[tuple]:
    """(offset, frames, first sample, end sample) of each segment of a recording, as write/plan.py cuts it."""
    total, out, offset = 1 + samples // hop, [], 0
    while total - offset > owned + overlap:
        out.append((offset, owned + overlap))
        offset += owned
    out.append((offset, total - offset))
    return [(o, f, o * hop, min((o + f) * hop - 1, samples)) for o, f in out]


def test_labelmap_is_vaks_to_map():
    for names in ({"c", "a", "b"}, {"1", "2", "10", "27"}, set(), {"i", "a", "Z"}):
        assert labelmap(names) == vak_to_map(names) and list(labelmap(names)) == list(vak_to_map(names))
        assert labelmap_problem(labelmap(names)) is None
    assert labelmap("iabc") == {"background": 0, "a": 1, "b": 2, "c": 3, "i": 4}
    with pytest.raises(ValueError, match="named 'background'"):
        labelmap({"a", "background"})
    for wrong, problem in (({"a": 1}, "'background' is missing"), ({"background": 1, "a": 0}, "'background' is 1"),
                           ({"background": 0, "b": 1, "a": 2}, "'b' is 1, vak's rule gives it 2"),
                           ({"background": 0, "a": True}, "'a' is True"), ({"background": 0, "a": 2}, "'a' is 2"),
                           ([], "not an object"), (None, "not an object")):
        assert problem in str(labelmap_problem(wrong))
    merged, lookups = merge_labelmaps([labelmap("ab"), labelmap("bc"), labelmap("")])
    assert merged == labelmap("abc")
    assert [m.tolist() for m in lookups] == [[0, 1, 2], [0, 2, 3], [0]]


@pytest.mark.parametrize("hop,rate", [(10, 1000), (64, 16000), (160, 16000), (64, 32000), (7, 8000), (441, 44100)])
def test_the_nearest_frame_is_numpys_argmin_on_float_seconds_ties_included(hop, rate):
    """Every sample of 40 frames, half-way ones included (where float rounding picks the side, as in vak)."""
    bins = np.arange(42) * hop / rate
    expected = [int(np.argmin(np.abs(bins - s / rate))) for s in range(40 * hop)]
    assert [nearest_frame(s, hop, rate) for s in range(40 * hop)] == expected
    halfway = [s for s in range(40 * hop) if 2 * (s % hop) == hop]
    if halfway:
        assert {expected[s] - s // hop for s in halfway} <= {0, 1}


def test_a_tie_goes_where_vak_sent_it():
    """0.17 s at 16 kHz is sample 2720, half-way between frames 42 and 43 of hop 64: vak's reference data
    (tests/data/vak/frame_labels.json, speech) put it in 43; 0.03 s (sample 480, between 7 and 8) to 7."""
    assert nearest_frame(2720, 64, 16000) == 43 and nearest_frame(480, 64, 16000) == 7


def test_offsets_are_included_overlaps_go_to_the_later_start_and_ends_are_clipped():
    labels, hop, rate = labelmap("ab"), 10, 1000
    # a: samples 15..35 (frames 1.5..3.5): the nearest frames as vak's float seconds find them, offset included
    first, last = nearest_frame(15, hop, rate), nearest_frame(35, hop, rate)
    expected = [1 if first <= t <= last else 0 for t in range(10)]
    assert frame_labels({"a": [[15, 35]]}, labels, 10, hop, rate).tolist() == expected
    # shorter than a hop: still one frame, its nearest; empty: none (as it masks none)
    assert frame_labels({"a": [[41, 44]], "b": [[70, 70]]}, labels, 10, hop, rate).tolist() == [0, 0, 0, 0, 1, 0, 0,
                                                                                              0, 0, 0]
    # the later start wins where they overlap, whichever name is first in the dict; other names are left out
    got = frame_labels({"b": [[24, 61]], "a": [[0, 34]], "speech": [[0, 100]]}, labels, 10, hop, rate)
    assert got.tolist() == [1, 1, 2, 2, 2, 2, 2, 0, 0, 0] and got.dtype == np.int64
    assert frame_labels({"a": [[24, 61]], "b": [[0, 34]]}, labels, 10, hop, rate).tolist() == [2, 2, 1, 1, 1, 1, 1, 0,
                                                                                             0, 0]
    # past the last centre (frame 9 at 90): clipped to the last frame
    assert frame_labels({"a": [[96, 99]]}, labels, 10, hop, rate).tolist() == [0] * 9 + [1]
    # a segment (frames 4..7 of a recording of 10; intervals from its sample 40): the recording's frames, then its
    # part. a ends at 36, nearest frame 4; b's offset (100) is past frame 9, clipped to it, not to the segment
    segment = dict(offset=4, recording_frames=10)
    assert frame_labels({"a": [[-25, -4]], "b": [[34, 60]]}, labels, 4, hop, rate, **segment).tolist() == [1, 0, 0, 2]
    assert frame_labels({"a": [[-30, -26]]}, labels, 4, hop, rate, **segment).tolist() == [0, 0, 0, 0]
    assert frame_labels({"a": [[44, 60]]}, labels, 4, hop, rate, offset=4, recording_frames=None).tolist() == [0, 0, 0,
                                                                                                            1]
    assert frame_labels({"a": [[44, 60]]}, labels, 4, hop, rate, **segment).tolist() == [0, 0, 0, 0]  # onset frame 8


@pytest.mark.parametrize("hop,rate", [(160, 16000), (64, 32000), (7, 8000), (64, 16000)])
def test_random_intervals_give_vaks_labels(hop, rate):
    rng = np.random.default_rng(hop)
    labels = labelmap("abc")
    for _ in range(300):
        samples = int(rng.integers(hop, 60 * hop))
        frames = 1 + samples // hop
        intervals: Dict[str, List[List[int]]] = {}
        for _ in range(int(rng.integers(0, 8))):
            a, b = sorted(int(x) for x in rng.integers(0, samples + 1, 2))
            if rng.random() < 0.3:  # exactly half-way between two centres: vak's float rounding decides
                a, b = a - a % hop + hop // 2, max(b - b % hop + hop // 2, a - a % hop + hop // 2)
            intervals.setdefault(str(rng.choice(list("abcd"))), []).append([a, b])
        expected = vak_labels(intervals, labels, frames, hop, rate)
        assert frame_labels(intervals, labels, frames, hop, rate).tolist() == expected.tolist(), intervals


def test_segments_of_a_long_file_give_the_whole_files_labels():
    """Intervals ending just before a segment (their last frame is its first) and overlapping intervals that began
    before it (their order decides) included; `reaching_intervals` finds both in the segments before."""
    rng = np.random.default_rng(5)
    labels, differ_without = labelmap("abc"), 0
    for _ in range(1500):
        hop = int(rng.choice([3, 8, 160]))
        samples = int(rng.integers(60, 400)) * hop
        owned, overlap = int(rng.integers(2, 30)), int(rng.integers(1, 12))
        parts = segments(samples, hop, owned, overlap)
        starts = [first for _, _, first, _ in parts]
        intervals: Dict[str, List[List[int]]] = {}
        for _ in range(int(rng.integers(0, 16))):
            near = int(rng.choice(starts)) + int(rng.integers(-hop, hop + 1))
            a = near if rng.random() < 0.3 else int(rng.integers(0, samples))
            b = int(rng.choice(starts)) + int(rng.integers(-hop, hop)) if rng.random() < 0.3 else \
                a + int(rng.integers(0, 200 * hop))
            a, b = min(max(a, 0), samples), min(max(b, 0), samples)
            intervals.setdefault(str(rng.choice(list("abcd"))), []).append(sorted([a, b]))
        for spans in intervals.values():
            rng.shuffle(spans)  # metadata.json's order, not necessarily sorted
        total = 1 + samples // hop
        whole = frame_labels(intervals, labels, total, hop, 16000)
        stored = [(first, end - first, cut(intervals, first, end - first)) for _, _, first, end in parts]
        for k, (offset, frames, _, _) in enumerate(parts):
            reaching = reaching_intervals(lambda back: stored[k - back], hop, 16000)
            got = frame_labels(reaching, labels, frames, hop, 16000, offset, total)
            assert got.tolist() == whole[offset : offset + frames].tolist(), (intervals, hop, owned, overlap, k)
            alone = frame_labels(stored[k][2], labels, frames, hop, 16000, offset, total)
            differ_without += alone.tolist() != got.tolist()
    assert differ_without > 100  # the cut alone would give other labels: the cases are there
