"""count_kept_spans (the columnar count behind len()) against kept_starts, the window rule, file by file.

The count works piece by piece on the content function's edges (rules/windows.py), so the cases here aim at
its edges: spans that touch, overlap, come out of order or from several names, or run past the end;
content ratios whose threshold ratio * W is whole or not; segments of long files (offset, owned); files picked
out of an index (spans gathered, not sliced); blocks of one file and of many.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest

from spgdataset.rules.windows import Spans, WindowRule, count_kept_spans, kept_starts

NAMES = ("speech", "noise")


def random_spans(rng: np.random.Generator, frames: int, hop: int, style: str) -> List[List[int]]:
    """A few spans (samples) over a file of `frames` frames: sorted and apart, touching, or anyhow."""
    limit = frames * hop + 3 * hop
    if style == "apart":
        cuts = np.unique(rng.integers(0, limit, size=2 * int(rng.integers(0, 6))))
        cuts = cuts[: len(cuts) // 2 * 2]
        return [[int(a), int(b)] for a, b in cuts.reshape(-1, 2)]
    if style == "touching":
        cuts = np.unique(rng.integers(0, limit, size=int(rng.integers(0, 7))))
        return [[int(a), int(b)] for a, b in zip(cuts[:-1], cuts[1:])]
    pairs = rng.integers(0, limit, size=(int(rng.integers(0, 6)), 2))
    return [[int(a), int(b)] for a, b in pairs]  # any order, overlapping, empty or reversed (an empty span)


def columns(per_file: List[Dict[str, List[List[int]]]], names, order: np.ndarray) -> List[Spans]:
    """Spans of `names` stored in the file order `order` (as an index would hold them), read back per file."""
    content = []
    for name in names:
        stored = [per_file[i].get(name, []) for i in order]
        sizes = np.array([len(s) for s in stored], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        edges = np.array([s for spans in stored for s in spans], dtype=np.int64).reshape(-1, 2)
        at = np.empty(len(order), dtype=np.int64)
        at[order] = np.arange(len(order))
        content.append(Spans(offsets[at], offsets[at + 1], edges[:, 0], edges[:, 1]))
    return content


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_counts_equal_kept_starts_on_awkward_spans(seed, wide, monkeypatch):
    """Random files and spans, both ways of storing them, blocks from one file to all; in int32 and int64."""
    if wide:
        import spgdataset.rules.windows as windows

        monkeypatch.setattr(windows, "NARROW_LINE", 0)
    rng = np.random.default_rng(100 + seed)
    hop = int(rng.choice([80, 160, 441]))
    window, step = [(192, 10), (40, 7), (12, 30), (25, 25), (9, 1), (50, 3)][seed % 6]
    ratio = float(rng.choice([0.01, 0.25, 0.5, 0.5 + 0.5 / window, 0.73, 1.0]))
    names = NAMES[: 1 + seed % 2]
    n = 150
    frames = rng.integers(1, 400, size=n)
    annotated = rng.random(n) < 0.85
    styles = ("apart", "touching", "anyhow")
    per_file = [{name: random_spans(rng, int(f), hop, styles[(seed + k) % 3]) for k, name in enumerate(names)}
                if a else {} for f, a in zip(frames, annotated)]
    order = np.arange(n) if seed % 3 else rng.permutation(n)  # stored in file order, or gathered
    rule = WindowRule(window, step, hop, names, ratio, bool(seed % 4 == 1))
    for block_windows in (1, int(rng.integers(2, 60)), 1 << 16):
        got = count_kept_spans(rule, frames, annotated, columns(per_file, names, order),
                               block_files=int(rng.integers(1, 200)), block_windows=block_windows)
        want = [len(kept_starts(rule, int(f), iv, annotated=bool(a))) for f, iv, a in zip(frames, per_file, annotated)]
        assert got.tolist() == want, (block_windows, window, step, hop, ratio)


@pytest.mark.parametrize("seed", range(8))
def test_counts_of_segments_equal_kept_starts(seed):
    """Segments of long files: windows start at the file's multiples of the step, cut at `owned`."""
    rng = np.random.default_rng(200 + seed)
    hop, (window, step) = 160, [(192, 10), (40, 7), (25, 25), (9, 1)][seed % 4]
    n = 120
    frames = rng.integers(1, 600, size=n)
    offset = rng.integers(0, 5000, size=n)
    owned = np.minimum(rng.integers(1, 600, size=n), frames)
    annotated = rng.random(n) < 0.9
    per_file = [{"speech": random_spans(rng, int(f), hop, ("apart", "touching", "anyhow")[seed % 3])} if a else {}
                for f, a in zip(frames, annotated)]
    rule = WindowRule(window, step, hop, ("speech",), float(rng.choice([0.2, 0.5, 0.9])), bool(seed % 2))
    got = count_kept_spans(rule, frames, annotated, columns(per_file, ("speech",), np.arange(n)), offset, owned,
                           block_windows=int(rng.integers(1, 100)))
    want = [len(kept_starts(rule, int(f), iv, offset=int(o), owned=int(w), annotated=bool(a)))
            for f, iv, o, w, a in zip(frames, per_file, offset, owned, annotated)]
    assert got.tolist() == want


def test_padded_windows_of_short_segments_are_counted_alone():
    """pad_short on segments shorter than their phase (counted from the phase, their frames are negative): each
    file's count is what it is alone, whatever its neighbours hold (the line keeps their content apart)."""
    rng = np.random.default_rng(300)
    hop, window, step = 80, 98, 45
    n = 200
    frames = rng.integers(1, 60, size=n)
    offset = rng.integers(0, 5000, size=n)
    owned = rng.integers(1, 60, size=n)
    per_file = [{"speech": [[0, int(f) * hop]]} if i % 3 else {"speech": [[0, 5000 * hop]]}
                for i, f in enumerate(frames)]
    content = columns(per_file, ("speech",), np.arange(n))
    for ratio in (0.01, 0.04, 0.5):
        rule = WindowRule(window, step, hop, ("speech",), ratio, True)
        together = count_kept_spans(rule, frames, np.ones(n, dtype=bool), content, offset, owned)
        alone = count_kept_spans(rule, frames, np.ones(n, dtype=bool), content, offset, owned, block_files=1)
        assert together.tolist() == alone.tolist(), ratio


def test_window_edges_at_span_edges():
    """One span, every shift by a frame around the window's edges and the threshold: counted exactly."""
    hop, window, step = 160, 20, 4
    for ratio in (0.5, 0.55, 1.0):
        rule = WindowRule(window, step, hop, ("speech",), ratio)
        for first in range(0, 30):
            for length in range(0, 30):
                spans = {"speech": [[first * hop, (first + length) * hop]]}
                got = count_kept_spans(rule, np.array([70]), np.array([True]), columns([spans], ("speech",),
                                                                                      np.arange(1)))
                assert got[0] == len(kept_starts(rule, 70, spans)), (ratio, first, length)


def test_wide_lines_count_the_same(monkeypatch):
    """A block whose line is too long for int32 is counted in int64: forced here on small files."""
    import spgdataset.rules.windows as windows

    rng = np.random.default_rng(7)
    frames = rng.integers(1, 500, size=80)
    annotated = np.ones(80, dtype=bool)
    per_file = [{"speech": random_spans(rng, int(f), 160, "anyhow")} for f in frames]
    rule = WindowRule(40, 7, 160, ("speech",), 0.5)
    content = columns(per_file, ("speech",), np.arange(80))
    narrow = count_kept_spans(rule, frames, annotated, content)
    monkeypatch.setattr(windows, "NARROW_LINE", 0)
    wide = count_kept_spans(rule, frames, annotated, content)
    assert narrow.tolist() == wide.tolist() == [len(kept_starts(rule, int(f), iv)) for f, iv in zip(frames, per_file)]
