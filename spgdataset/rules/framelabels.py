"""The frame-label rule: vak's per-frame integer labels from labelled intervals, and its labelmap.

vak trains on one integer per time bin (vak.transforms.frame_labels.from_segments): 0 for background, and for
each segment the bins from the one nearest its onset to the one nearest its offset, both included (the offset
bin is still the syllable), later segments overwriting earlier ones where they overlap. Here the bins are the
centred frames (frame t at sample t * hop, rules/frames.py) and intervals are in samples at the feature rate.
"Nearest" is decided as vak decides it, in float64 seconds: bin times t * hop / rate, the boundary at
sample / rate (the annotation's seconds: an onset in milliseconds at a rate in kHz is that very float), the
distances as np.abs(time_bins - onset) computes them, the earlier bin when they are equal. A boundary half-way
between two centres is common (a 2 ms onset with 4 ms frames) and vak's rounding then picks either side; the
same arithmetic here gives the same side. Intervals are applied in order of start sample, ties in labelmap
order (vak: annotation order, which for one file is onset order).

The labelmap is vak's to_map(labelset, map_background=True): "background" 0, the other labels sorted as
strings from 1.

A long recording stored in segments (write/plan.py) has each segment's intervals cut to the segment's samples.
The rule is not local (a frame takes the label of an interval that ends up to half a hop before it; of two
overlapping intervals the later-starting one wins), so a segment's labels are computed from the recording's
intervals as far as they reach its frames: `reaching_intervals` puts back what the cut took away, from the
segments before it. That is exact for a hop of 3 samples or more (tests/rules/test_framelabels.py); with 1 or 2,
an interval starting at a segment's last sample, which the segment does not hold, would still be nearest its
last frame, which no window holds (a window is at most the segments' overlap).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

BACKGROUND = "background"

Spans = Mapping[str, Sequence[Sequence[int]]]  # {name: [[start, stop], ...]}, samples
Segment = Tuple[int, int, Spans]  # a segment's first sample in its recording, its samples, its intervals


def labelmap(names: Iterable[str]) -> Dict[str, int]:
    """vak's to_map(labelset, map_background=True): "background" 0, the names sorted from 1. A name
    "background" would take the background's number: ValueError."""
    names = set(names)
    if BACKGROUND in names:
        raise ValueError(f"a label is named {BACKGROUND!r}, which frame labels keep for the frames outside every "
                         "interval (0): rename that label to use frame labels")
    return {BACKGROUND: 0, **{name: i for i, name in enumerate(sorted(names), 1)}}


def labelmap_problem(value: object) -> Optional[str]:
    """What keeps `value` from being what `labelmap` makes of its own names (what a manifest may hold), or None."""
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
        return "not an object {name: number}"
    names = set(value) - {BACKGROUND}
    expected = {BACKGROUND: 0, **{name: i for i, name in enumerate(sorted(names), 1)}}
    for name, number in value.items():
        if type(number) is not int or number != expected[name]:
            return f"{name!r} is {number!r}, vak's rule gives it {expected[name]}"
    if BACKGROUND not in value:
        return f"{BACKGROUND!r} is missing"
    return None


def merge_labelmaps(maps: Sequence[Mapping[str, int]]) -> Tuple[Dict[str, int], List[np.ndarray]]:
    """One labelmap over the names of several, and per map a lookup array from its numbers to the merged ones."""
    merged = labelmap({name for m in maps for name in m if name != BACKGROUND})
    lookups = []
    for m in maps:
        lookup = np.zeros(max(m.values(), default=0) + 1, dtype=np.int64)
        for name, number in m.items():
            lookup[number] = merged[name]
        lookups.append(lookup)
    return merged, lookups


def nearest_frame(sample: int, hop_length: int, sample_rate: int) -> int:
    """vak's np.argmin(np.abs(time_bins - onset)) for bins t * hop / rate and the onset sample / rate (>= 0): of
    the two frames around the sample the nearer, in float64 as numpy computes it; the earlier on equal distances.
    Python's int / int is correctly rounded, as numpy's float64 division of those integers."""
    k = sample // hop_length
    onset = sample / sample_rate
    return k if abs(k * hop_length / sample_rate - onset) <= abs((k + 1) * hop_length / sample_rate - onset) else k + 1


def frame_labels(intervals: Spans, labels: Mapping[str, int], frames: int, hop_length: int, sample_rate: int,
                 offset: int = 0, recording_frames: Optional[int] = None) -> np.ndarray:
    """int64 (frames,): the labels of frames offset .. offset + frames - 1 of a recording.

    `intervals` are in samples from sample offset * hop (a segment's first frame; a whole file: offset 0) and
    may start before it (reaching_intervals); names not in `labels` are left out. Onset and offset frames are
    found on the recording's frames, clipped to its `recording_frames` (None: the segment ends the recording),
    and only then is the segment's part taken: a segment gets the frames the whole file gets.
    """
    last = (offset + frames if recording_frames is None else recording_frames) - 1
    shift = offset * hop_length
    spans = [(int(a) + shift, labels[name], int(b) + shift)
             for name, pairs in intervals.items() if name in labels for a, b in pairs if b > a]
    out = np.zeros(frames, dtype=np.int64)
    for start, number, stop in sorted(spans, key=lambda span: span[:2]):
        first = min(nearest_frame(max(start, 0), hop_length, sample_rate), last)
        final = min(nearest_frame(max(stop, 0), hop_length, sample_rate), last)
        if final >= offset and first < offset + frames:
            out[max(first - offset, 0) : final - offset + 1] = number
    return out


def reaching_intervals(segment: Callable[[int], Segment], hop_length: int,
                       sample_rate: int) -> Dict[str, List[List[int]]]:
    """The intervals that decide a segment's frame labels, in samples from its first sample, as the recording
    has them: `segment(0)` is the segment, `segment(j)` the j-th before it (asked for while the one after it
    starts after sample 0). A segment holds each interval cut to its samples (write/featurize.py), in the
    recording's order, which hides (1) an interval that ends at or before the segment's first sample yet within
    half a hop of it (the frame nearest its end is the segment's first), and (2) where an interval that began
    before the segment starts, which decides the order of overlapping ones. Both are in the segments before:
    the intervals of a name cut at a segment's start are, in the same order, those of the segment before that
    run across that start, so the k-th of one is the k-th of the other.
    """
    first, _, own = segment(0)
    frame = first // hop_length
    # [name, start, stop, j, i]: the start as read from segment j, where the interval is the name's i-th
    items: List[List[Any]] = [[name, first + a, first + b, 0, i] for name, pairs in own.items()
                              for i, (a, b) in enumerate(pairs)]
    j, places = 0, {0: (first, own)}
    while places[j][0] > 0:
        start, spans = places[j]
        waiting = [item for item in items if item[3] == j and item[1] == start]
        if j > 0 and not waiting:
            break
        before, _, earlier = segment(j + 1)
        places[j + 1] = (before, earlier)
        if j == 0:  # (1): absent from the segment, they end in the one before
            items += [[name, before + a, before + b, 1, i] for name, pairs in earlier.items()
                      for i, (a, b) in enumerate(pairs)
                      if before + b <= first and nearest_frame(before + b, hop_length, sample_rate) >= frame]
        for name in {item[0] for item in waiting}:  # (2)
            cut = [i for i, (a, _) in enumerate(spans.get(name, ())) if a == 0]
            across = [i for i, (a, b) in enumerate(earlier.get(name, ())) if before + a <= start < before + b]
            if len(cut) != len(across):
                continue  # not cut from one recording (an edited index): the starts stay as they are
            for item in (item for item in waiting if item[0] == name and item[4] in cut):
                i = across[cut.index(item[4])]
                item[1], item[3], item[4] = before + earlier[name][i][0], j + 1, i
        j += 1
    out: Dict[str, List[List[int]]] = {}
    for name, begin, stop, _, _ in items:
        out.setdefault(name, []).append([begin - first, stop - first])
    return out
