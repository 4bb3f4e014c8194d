"""The window rule: which (start, W) frame windows a file yields.

W = round(window_size_sec * sr / hop) frames, step S = round(window_offset_sec * sr / hop) frames.
Starts are 0, S, 2S, ... while start + W <= T. Where a file is annotated (has any interval names),
a window is kept only if at least `content_ratio` of its W frames lie in the content mask
(the union of the chosen content interval names; with no names chosen there is no filter).
A segment of a long file (frames [offset, offset + frames) of it) yields the file's windows that start in its
first `owned` frames, in its own frame numbers: each window of the file once, whole.
"""

from __future__ import annotations

import dataclasses
import math

from typing import Any, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .frames import union_mask


def window_frames(seconds: float, sample_rate: int, hop_length: int) -> int:
    """A duration in seconds as a whole number of frames (at least 1)."""
    frames = int(round(seconds * sample_rate / hop_length))
    if frames < 1:
        raise ValueError(f"{seconds} s is less than one frame at {sample_rate} Hz with hop {hop_length}")
    return frames


def window_starts(frames: int, window: int, step: int, phase: int = 0, owned: Optional[int] = None) -> np.ndarray:
    """All window starts (in frames) of a file of `frames` frames, before content filtering.

    A segment of a long file (format/segments.py) holds frames [offset, offset + frames) of its file and owns
    the windows that start in its first `owned` frames: its starts are the file's (multiples of `step`), here
    local, so they begin at `phase` = (-offset) % step.
    """
    limit = frames - window + 1 if owned is None else min(frames - window + 1, owned)
    if limit <= phase:
        return np.zeros(0, dtype=np.int64)
    return np.arange(phase, limit, step, dtype=np.int64)


def window_content(mask: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Number of True frames of `mask` in each window [start, start + window)."""
    cumulative = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return cumulative[starts + window] - cumulative[starts]


@dataclasses.dataclass(frozen=True)
class WindowRule:
    """The window rule's parameters: window and step in frames, the content names and ratio, the hop (for
    intervals in samples) and whether a file shorter than a window yields one padded window."""

    window: int
    step: int
    hop_length: int
    content_names: Tuple[str, ...] = ()
    content_ratio: float = 0.0
    pad_short: bool = False

    @property
    def filters(self) -> bool:
        """Whether content decides anything (names chosen and a ratio above 0)."""
        return bool(self.content_names) and self.content_ratio > 0

    def phase(self, offset: Any) -> Any:
        """The first window start of a segment that begins at frame `offset` of its file, in the segment's own
        frames (the file's starts are multiples of `step`); an int or an array of them."""
        return -offset % self.step


def kept_starts(rule: WindowRule, frames: int, intervals: Optional[Mapping[str, Sequence[Sequence[int]]]],
                offset: int = 0, owned: Optional[int] = None, annotated: Optional[bool] = None) -> np.ndarray:
    """Window starts of one file after the content-ratio filter (see module docstring).

    A file shorter than one window yields nothing, or with `pad_short` one window at 0 that the
    reader pads (its padded frames count as non-content). `offset`, `owned`: a segment's (window_starts).
    `annotated`: whether the file has interval names (default: whether `intervals` has any; a segment of an
    annotated file may hold no span of its own).
    """
    window = rule.window
    if rule.pad_short and 0 < frames < window:
        starts = np.zeros(1, dtype=np.int64)
    else:
        starts = window_starts(frames, window, rule.step, rule.phase(offset), owned)
    annotated = bool(intervals) if annotated is None else annotated
    if not annotated or not rule.filters or len(starts) == 0:
        return starts  # unannotated file, no content chosen, or no filter asked for
    mask = union_mask(intervals or {}, rule.content_names, max(frames, window), rule.hop_length)
    mask[frames:] = False
    return starts[window_content(mask, starts, window) >= rule.content_ratio * window]


def count_kept(rule: WindowRule, frames: Sequence[int],
               intervals: Sequence[Optional[Mapping[str, Sequence[Sequence[int]]]]]) -> np.ndarray:
    """len(kept_starts(...)) for many files at once, given as per-file interval dicts (see count_kept_spans)."""
    annotated = np.array([bool(iv) for iv in intervals], dtype=bool)
    content = []
    for name in rule.content_names:
        per_file = [list((iv or {}).get(name, ())) for iv in intervals]
        sizes = np.array([len(spans) for spans in per_file], dtype=np.int64)
        edges = np.array([s for spans in per_file for s in spans], dtype=np.int64).reshape(-1, 2)
        first = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        content.append(Spans(first, first + sizes, edges[:, 0], edges[:, 1]))
    return count_kept_spans(rule, np.asarray(frames, dtype=np.int64), annotated, content)


NARROW_LINE = 2**29  # a block laid on a shorter line is counted in int32 (edges are 4 * position + code)


class Spans(NamedTuple):
    """The spans (samples, half-open) of one interval name: file i's are start[lo[i]:hi[i]], stop[lo[i]:hi[i]]."""

    lo: np.ndarray
    hi: np.ndarray
    start: np.ndarray
    stop: np.ndarray


def count_kept_spans(
    rule: WindowRule,
    frames: np.ndarray,
    annotated: np.ndarray,
    content: Sequence[Spans],
    offset: Optional[np.ndarray] = None,
    owned: Optional[np.ndarray] = None,
    block_files: int = 1 << 20,
    block_windows: Optional[int] = None,
    block_edges: int = 1 << 15,
) -> np.ndarray:
    """len(kept_starts(...)) for every file, from columns: no Python loop per file, window or frame.

    `annotated[i]`: file i has interval names; `content`: the spans of each name chosen as content. Files
    go in blocks of `block_files`, and those with content to count in blocks of about `block_edges` span
    edges (4 per span, 2 per file; and of `block_windows` windows, if given), so that memory stays bounded
    at any corpus size and a block's arrays stay in the cache; in a block, each window's content comes from
    the edges of the merged spans (_kept_in_block). kept_starts stays the rule; this is its count, and tests
    hold the two equal.
    `offset`, `owned` (per file, None: whole files): segments of long files (window_starts). A segment is
    counted as the file it would be without its first `rule.phase(offset)` frames, its windows cut at `owned`.
    """
    window, step, hop_length = rule.window, rule.step, rule.hop_length
    content_ratio = rule.content_ratio if rule.filters else 0.0
    phase = None if offset is None else rule.phase(np.asarray(offset))
    counts = np.empty(len(frames), dtype=np.int64)
    for lo in range(0, len(frames), block_files):
        whole = np.asarray(frames[lo : lo + block_files], dtype=np.int64)
        shift = np.zeros(len(whole), dtype=np.int64) if phase is None else np.asarray(phase[lo : lo + block_files])
        block = whole - shift
        found = np.where(block >= window, (block - window) // step + 1, 0)
        if owned is not None:
            found = np.minimum(found, np.maximum(-(-(np.asarray(owned[lo : lo + block_files]) - shift) // step), 0))
        if rule.pad_short:
            found[(whole > 0) & (whole < window)] = 1
        if content_ratio > 0:
            files = lo + np.flatnonzero((np.asarray(annotated[lo : lo + block_files]) != 0) & (found > 0))
            limits = [(_running_edges(content, files), block_edges)]
            if block_windows is not None:
                limits.append((np.cumsum(found[files - lo]), block_windows))
            for a, b in _blocks(limits, len(files)):
                part = files[a:b]
                at = part - lo
                moved = None if phase is None else shift[at] * hop_length
                found[at] = _kept_in_block(block[at], found[at], [_spans_of(s, part, moved) for s in content],
                                           window, step, hop_length, content_ratio)
        counts[lo : lo + block_files] = found
    return counts


def _running_edges(content: Sequence[Spans], files: np.ndarray) -> np.ndarray:
    """Running total of the edges of `files` (2 per file, 4 per span), in place: a block's arrays and so its
    time grow with these, not with its windows."""
    edges = np.full(len(files), 2, dtype=np.int64)
    for spans in content:
        per_file = spans.hi[files]
        per_file -= spans.lo[files]
        per_file *= 4
        edges += per_file
    return np.cumsum(edges, out=edges)


def _blocks(limits: Sequence[Tuple[np.ndarray, int]], n: int) -> Iterator[Tuple[int, int]]:
    """Consecutive ranges [a, b) of n items, each as long as every running total stays within its limit
    over it (each range holds at least one item)."""
    a = 0
    while a < n:
        b = min(int(np.searchsorted(total, (total[a - 1] if a else 0) + limit, "right")) for total, limit in limits)
        yield a, max(b, a + 1)
        a = max(b, a + 1)


def _spans_of(spans: Spans, block: np.ndarray,
              shift: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in the block, start, stop) of the spans of the files `block`, each file's moved back by its
    `shift` (samples; None: none). Files whose spans follow one another (an index's offsets) are sliced, not
    gathered: the common case, whole files in index order."""
    lo, hi = spans.lo[block], spans.hi[block]
    sizes = hi - lo
    position = np.repeat(np.arange(len(block)), sizes)
    if len(block) and (hi[:-1] == lo[1:]).all():
        start, stop = spans.start[lo[0] : hi[-1]], spans.stop[lo[0] : hi[-1]]
    else:
        within = np.arange(len(position)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        where = np.repeat(lo, sizes) + within
        start, stop = spans.start[where], spans.stop[where]
    if shift is None:
        return position, start, stop
    return position, start - shift[position], stop - shift[position]


def _kept_in_block(frames: np.ndarray, counts: np.ndarray, spans: List[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                   window: int, step: int, hop_length: int, content_ratio: float) -> np.ndarray:
    """Kept window counts of one block of files (their frames, window counts > 0 and content spans).

    The content of the window at s, f(s) = C(s + W) - C(s) (C(x): content frames before x), changes by a
    constant slope of -1, 0 or +1 frame per frame between the content spans' edges and those edges - W; so
    each piece's kept starts are counted in closed form and the cost grows with the spans, not the windows.
    The files are laid on one line, each at a multiple of `step` and far enough from the next that their
    pieces never mix; two slope-less edges per file bound its window starts.
    """
    # Each file's room on the line, in steps: past its content and its window starts (a padded window may start
    # past a segment's frames), then W more, where the next file's content may already count.
    cells = -(-(np.maximum(frames, (counts - 1) * step + 1) + window) // step)
    base = step * (np.cumsum(cells) - cells + -(-window // step))
    end = base + (counts - 1) * step + 1  # past the file's last window start
    first, last = _content_frames(frames, base, spans, hop_length)
    line_end = int(base[-1] + step * cells[-1])
    dtype = np.int32 if line_end < NARROW_LINE else np.int64  # narrower: quicker to divide and sort
    edges = _edges(first, last, base, end, line_end, window, dtype)
    code = edges & 3
    position = edges >> 2
    slope = np.cumsum(code - 1, dtype=dtype)
    value = np.zeros(len(edges), dtype=dtype)  # f at each edge
    gaps = np.diff(position)
    gaps *= slope[:-1]
    np.cumsum(gaps, out=value[1:], dtype=dtype)
    needed = min(math.ceil(content_ratio * window), window + 1)  # more than W frames: none kept, as W + 1
    pieces = _kept_in_pieces(position, slope, value, step, needed)
    bounds = np.flatnonzero(code == 1)  # each file's base and end, in that order, then the line's end
    return np.add.reduceat(pieces, bounds[:-1])[::2]


def _content_frames(frames: np.ndarray, base: np.ndarray, spans: List[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                    hop_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """The content frames of the block's files as disjoint sorted spans [first, last) on the line (each file
    from its `base`), clipped to the file; spans that touch may stay apart (no slope changes between them)."""
    if len(spans) == 1:
        where, start, stop = spans[0]
    else:
        where = np.concatenate([w for w, _, _ in spans]) if spans else np.zeros(0, np.int64)
        start = np.concatenate([a for _, a, _ in spans]) if spans else np.zeros(0, np.int64)
        stop = np.concatenate([b for _, _, b in spans]) if spans else np.zeros(0, np.int64)
    at = base[where]
    first = at + np.maximum(-(-start // hop_length), 0)
    last = at + np.minimum(-(-stop // hop_length), frames[where])
    keep = first < last
    if not keep.all():
        first, last = first[keep], last[keep]
    if not (first[1:] >= last[:-1]).all():  # overlapping or out of order (several names): merge
        first, last = _merged(first, last)
    return first, last


def _edges(first: np.ndarray, last: np.ndarray, base: np.ndarray, end: np.ndarray, line_end: int,
           window: int, dtype: Any) -> np.ndarray:
    """Every edge as 4 * position + (slope change + 1), sorted: span edges change f's slope (+1 at first - W and
    last, -1 at last - W and first), files' bases and ends and the line's end (code 1) do not. One sort orders
    the positions and carries the changes; the parts are sorted runs, which a stable sort merges quickly."""
    m, files = len(first), len(base)
    edges = np.empty(4 * m + 2 * files + 1, dtype=dtype)
    parts = ((first, 2 - 4 * window, m), (last, -4 * window, m), (first, 0, m), (last, 2, m), (base, 1, files),
             (end, 1, files))
    at = 0
    for values, code, size in parts:
        np.multiply(values, 4, out=edges[at : at + size])
        edges[at : at + size] += code
        at += size
    edges[-1] = 4 * line_end + 1
    edges.sort(kind="stable")
    return edges


def _kept_in_pieces(position: np.ndarray, slope: np.ndarray, value: np.ndarray, step: int,
                    needed: int) -> np.ndarray:
    """Window starts (multiples of `step`) s in [position[j], position[j + 1]) with f(s) = value[j] +
    slope[j] * (s - position[j]) >= needed, for each piece j (content is whole frames: >= ratio * W is
    >= ceil(ratio * W)). A piece of any other slope than -1, 0, +1 has no length (edges at one position).
    Arithmetic on masks, not np.where: the slopes come in no predictable order."""
    at, slope, short = position[:-1], slope[:-1], needed - value[:-1]  # short: frames missing at the piece start
    low = np.maximum(short, 0)
    low *= slope > 0  # rising: from where f reaches `needed`
    low += at
    high = position[1:] - 1
    cut = high - at
    cut += short
    np.maximum(cut, 0, out=cut)
    cut *= slope < (short > 0)  # falling, or flat below `needed`: up to where f is still `needed`
    high -= cut
    high //= step
    np.negative(low, out=low)
    low //= step
    high += low  # floor(high / step) - ceil(low / step)
    high += 1
    return np.maximum(high, 0, out=high)


def _merged(firsts: np.ndarray, lasts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The union of the spans [firsts, lasts) as disjoint sorted spans."""
    if len(firsts) == 0:
        return firsts, lasts
    order = np.argsort(firsts, kind="stable")
    firsts, lasts = firsts[order], lasts[order]
    reach = np.maximum.accumulate(lasts)
    new = np.ones(len(firsts), dtype=bool)
    new[1:] = firsts[1:] > reach[:-1]  # a span starting past everything before it opens a new merged span
    return firsts[new], np.maximum.reduceat(lasts, np.nonzero(new)[0])
