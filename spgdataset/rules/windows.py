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

from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple

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
    block_windows: int = 1 << 17,
) -> np.ndarray:
    """len(kept_starts(...)) for every file, from columns: no Python loop per file, window or frame.

    `annotated[i]`: file i has interval names; `content`: the spans of each name chosen as content. Files
    go in blocks of `block_files`, and their windows, laid end to end, in blocks of about `block_windows`,
    so that memory stays bounded at any corpus size; in a block, content comes from one cumulative sum over
    merged span edges. kept_starts stays the rule; this is its count, and tests hold the two equal.
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
            cumulative = np.cumsum(found[files - lo])
            a = 0
            while a < len(files):
                b = max(int(np.searchsorted(cumulative, (cumulative[a - 1] if a else 0) + block_windows, "right")),
                        a + 1)
                part = files[a:b]
                found[part - lo] = _kept_in_block(block[part - lo], found[part - lo],
                                                  [_spans_of(s, part, shift[part - lo] * hop_length) for s in content],
                                                  window, step, hop_length, content_ratio)
                a = b
        counts[lo : lo + block_files] = found
    return counts


def _spans_of(spans: Spans, block: np.ndarray, shift: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(position in the block, start, stop) of the spans of the files `block`, each file's moved back by its
    `shift` (samples)."""
    sizes = spans.hi[block] - spans.lo[block]
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    where = np.repeat(spans.lo[block], sizes) + within
    position = np.repeat(np.arange(len(block)), sizes)
    return position, spans.start[where] - shift[position], spans.stop[where] - shift[position]


def _kept_in_block(frames: np.ndarray, counts: np.ndarray, spans: List[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                   window: int, step: int, hop_length: int, content_ratio: float) -> np.ndarray:
    """Kept window counts of one block of files (their frames, window counts > 0 and content spans).

    The files are laid end to end, each padded to whole steps, so that every window starts on the grid of
    step-sized cells. The content of a window [s, s + W) is C(s + W) - C(s), with C(x) the content frames
    before x; C is needed only on two grids, the cell starts and the cell starts + W % S, and on a grid it
    is a few cumulative sums over the cells, built from the merged spans' edges (no search per window).
    """
    lengths = -(-np.maximum(frames, window) // step) * step
    cell_offsets = np.concatenate(([0], np.cumsum(lengths // step)))
    where = np.concatenate([w for w, _, _ in spans]) if spans else np.zeros(0, np.int64)
    start = np.concatenate([a for _, a, _ in spans]) if spans else np.zeros(0, np.int64)
    stop = np.concatenate([b for _, _, b in spans]) if spans else np.zeros(0, np.int64)
    first = np.maximum(-(-start // hop_length), 0)
    last = np.minimum(-(-stop // hop_length), frames[where])
    keep = first < last
    base = cell_offsets[where][keep] * step
    merged_first, merged_last = _merged(base + first[keep], base + last[keep])
    cells = int(cell_offsets[-1])
    at_cell = _content_on_grid(merged_first, merged_last, step, 0, cells + 1)
    at_end = _content_on_grid(merged_first, merged_last, step, window % step, cells + 1)
    begins = np.cumsum(counts) - counts  # first window of each file, in the block's window order
    cell = np.repeat(cell_offsets[:-1] - begins, counts) + np.arange(int(counts.sum()))
    kept = at_end[cell + window // step] - at_cell[cell] >= content_ratio * window
    return np.add.reduceat(kept, begins).astype(np.int64)


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


def _content_on_grid(firsts: np.ndarray, lasts: np.ndarray, step: int, shift: int, size: int) -> np.ndarray:
    """C(m * step + shift) for m in 0..size-1, C(x) = frames before x inside the disjoint spans.

    Each span adds (x - first)+ - (x - last)+. On the grid, (x - p)+ is 0 before the first point at or past p,
    then grows by `step` per point: a jump there (what it has reached) plus a slope after it, so
    C = cumsum(jumps + step * cumsum(slopes)), one event per span edge (integer sums: floats add slowly).
    """
    m_first, m_last = -(-(firsts - shift) // step), -(-(lasts - shift) // step)
    points, m = np.concatenate((firsts, lasts)), np.concatenate((m_first, m_last))
    reached = (m * step + shift - points) * np.concatenate((np.ones(len(firsts)), -np.ones(len(lasts))))
    out = np.bincount(m_first + 1, minlength=size + 2)[:size] - np.bincount(m_last + 1, minlength=size + 2)[:size]
    np.cumsum(out, out=out)
    out *= step
    out += np.bincount(m, weights=reached, minlength=size + 1)[:size].astype(np.int64)
    return np.cumsum(out, out=out)
