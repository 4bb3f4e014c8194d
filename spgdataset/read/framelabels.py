"""A dataset's frame labels: its labelmap, and each file's labels by the rule (rules/framelabels.py).

The labelmap is the manifest's (the writer's labelset, else the interval names it saw); a set written before
labelmaps gets the same rule over the interval names of its index. A label named "background" has no number
of its own (0 is every frame outside the intervals): asking for frame labels of such a set is an error that
says so, while the set stays readable for everything else.

A segment of a long recording is labelled from the recording's intervals as far as they reach its frames
(rules/framelabels.py: reaching_intervals, from the index rows of the segments before it), so that its labels
are the whole file's: the windows of a set in segments equal those of the same set written whole.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..format.index import Index
from ..rules.framelabels import BACKGROUND, Segment, frame_labels, labelmap, reaching_intervals
from .options import DatasetConfig
from .source import ShardSet


def labelmap_of(shards: ShardSet) -> Dict[str, int]:
    """The set's labelmap: {"background": 0, name: 1.., ...}; ValueError naming the set when a label is named
    "background"."""
    manifest = shards.manifest
    if manifest.labelmap is not None:
        return dict(manifest.labelmap)
    names = {BACKGROUND} if manifest.labelmap_refused else set(shards.index.intervals)
    try:
        return labelmap(names)
    except ValueError as exc:
        raise ValueError(f"{shards.root}: {exc}") from None


class FrameLabeller:
    """Each file's frame labels from its index row (and a segment's from the rows before it)."""

    def __init__(self, shards: ShardSet, labels: Dict[str, int], hop_length: int, sample_rate: int) -> None:
        """`shards`, not its index: a spawned DataLoader worker maps the index again (source.py), never a copy."""
        self.shards, self.labels, self.hop_length, self.sample_rate = shards, labels, hop_length, sample_rate

    @property
    def index(self) -> Index:
        return self.shards.index

    def __call__(self, position: int, intervals: Dict[str, List[List[int]]]) -> np.ndarray:
        """int64 (frames,) of the file at index `position`, whose intervals are `intervals` (checked against
        its shard's record by the caller)."""
        index, frames = self.index, int(self.index.frames[position])
        offset, owned = index.segment_of(position)
        if owned is None or (offset == 0 and owned == frames):  # a whole file
            return frame_labels(intervals, self.labels, frames, self.hop_length, self.sample_rate)
        reaching = reaching_intervals(lambda back: self.segment(position - back), self.hop_length, self.sample_rate)
        return frame_labels(reaching, self.labels, frames, self.hop_length, self.sample_rate, offset,
                            self.recording_frames(position))

    def segment(self, position: int) -> Segment:
        """(first sample in its recording, samples, intervals) of the segment at `position`."""
        index = self.index
        first = index.segment_of(position)[0] * self.hop_length
        return first, int(index.samples[position]), index.intervals_of(position)

    def recording_frames(self, position: int) -> int:
        """Frames of the recording a segment belongs to: the last of its segments owns all the frames it holds
        (format/index.py checks that the rows tile each recording)."""
        index, last = self.index, position
        assert index.offset is not None and index.owned is not None
        while last + 1 < index.files and index.owned[last] < index.frames[last]:
            last += 1
        return int(index.offset[last] + index.frames[last])


def frame_labeller(shards: ShardSet, config: DatasetConfig) -> Optional[FrameLabeller]:
    """The labeller a dataset's shard reader needs, when its items carry frame labels."""
    if not config.outputs.frame_labels:
        return None
    return FrameLabeller(shards, labelmap_of(shards), config.rule.hop_length,
                         shards.manifest.features.sample_rate)
