"""What a dataset holds, in numbers a person checks before training: `repr(ds)` in one line, `ds.summary()`
in full (files, hours, windows of every subset of the split, the label balance, and the files that yield no
window, with why). Everything comes from the index columns: no shard is opened.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..rules.splits import normalize_split, subsets
from .selection import Selection, select, split_units, window_counts

if TYPE_CHECKING:
    from .dataset import SpectrogramDataset


@dataclasses.dataclass
class Summary:
    """A dataset in numbers; `str()` renders it, `dataclasses.asdict()` gives it as plain data."""

    source: str
    features: Dict[str, Any]
    shards: int
    window: int
    step: int
    content: List[str]
    content_ratio: float
    split: List[float]
    split_key: Optional[str]
    subset: int
    subsets: List[Dict[str, Any]]  # per subset of the split: files, hours, windows, units (distinct split units)
    label: Optional[str]
    labels: List[Dict[str, Any]]  # per label value of this subset: value, files, windows
    no_windows: Dict[str, int]  # files of this subset that yield no window, by reason
    unkeyed: int = 0  # files without a split_key value (each its own unit, by its path)

    def __str__(self) -> str:
        f = self.features
        lines = [f"source: {self.source} ({self.shards} shards)",
                 f"features: {_height(f)}, {f['sample_rate']} Hz, n_fft {f['n_fft']}, hop {f['hop_length']}, "
                 f"{f['storage_dtype']}",
                 f"windows: {self.window} frames every {self.step}; content {self.content or 'none'} "
                 f"(ratio {self.content_ratio:g})",
                 f"split {tuple(self.split)} by {self.split_key or 'path'}:"]
        for row in self.subsets:
            flags = [] if row["windows"] else [f"EMPTY: no {'file' if row['files'] == 0 else 'window'}"]
            flags += ["this dataset"] if row["subset"] == self.subset else []
            lines.append(f"  subset {row['subset']}: {row['files']:,} files, {row['hours']:.2f} h, "
                         f"{row['windows']:,} windows{'  <- ' + ', '.join(flags) if flags else ''}")
        if len(self.subsets) > 1 and any(row["windows"] == 0 for row in self.subsets):
            units = [row["units"] for row in self.subsets]
            lines.append(f"  {spread(tuple(self.split), self.split_key, units, self.unkeyed)}")
        if self.label is not None:
            lines.append(f"label {self.label!r} in this subset ({len(self.labels)} values):")
            lines += [f"  {row['value']!r}: {row['files']:,} files, {row['windows']:,} windows" for row in self.labels]
        lost = ", ".join(f"{n:,} {why}" for why, n in self.no_windows.items() if n) or "none"
        lines.append(f"files of this subset yielding no window: {lost}")
        return "\n".join(lines)


def spread(parts: Tuple[float, ...], key: Optional[str], units: Sequence[int], unkeyed: int) -> str:
    """Where a split's units went, e.g. "5 distinct 'speaker' values: 5 in subset 0, 0 in 1, 0 in 2", and why a
    subset got none: a split by a key with few values can leave a part empty however many files there are."""
    if key is None:
        what = f"{sum(units):,} files (split by path)"
    else:  # a file without the key is a unit of its own, by its path
        what = f"{sum(units) - unkeyed:,} distinct {key!r} values" + \
            (f" and {unkeyed:,} file{'s' * (unkeyed != 1)} without one (each split by its path)" if unkeyed else "")
    text = f"{what}: " + ", ".join(f"{n:,} in {'subset ' * (s == 0)}{s}" for s, n in enumerate(units))
    empty = [s for s, n in enumerate(units) if n == 0]
    if not empty:
        return text
    named = f"subset{'s' * (len(empty) > 1)} {', '.join(map(str, empty))}"
    if all(parts[s] == 0 for s in empty):
        return f"{text}; {named} {'has' if len(empty) == 1 else 'have'} a fraction of 0 in split {parts}"
    few, more = ("values", "split by a key with more values, or ") if key else ("files", "")
    return (f"{text}; with so few {few} a split of {parts} leaves {named} empty ({more}give the split fewer or "
            "larger parts)")


def _everything(ds: "SpectrogramDataset") -> Selection:
    """Every file of the selected shards, with its windows: the split's whole."""
    return select(ds.shards.index, len(ds.shards.manifest.shards), ds.shards.selected, normalize_split((1,)), 0,
                  None, ds.rule)


def _units(ds: "SpectrogramDataset", files: np.ndarray, values: np.ndarray) -> Tuple[List[int], int]:
    """Distinct split units of `files` (their unit `values`) per subset of the split, and how many files have no
    split_key value."""
    index, split = ds.shards.index, ds.config.split
    units = np.unique(values)
    per_subset = np.bincount(subsets(units, split.bounds), minlength=len(split.bounds))
    unkeyed = 0
    if split.key is not None and split.key in index.metadata:
        unkeyed = int(((index.metadata[split.key].ids[files] < 0) & index.recordings(files)).sum())
    return [int(n) for n in per_subset], unkeyed


def summarize(ds: "SpectrogramDataset") -> Summary:
    index, split = ds.shards.index, ds.config.split
    everything = _everything(ds)
    files, counts = everything.files, everything.counts
    values = split_units(index, split.key)[files]
    part = subsets(values, split.bounds) if len(split.bounds) > 1 else np.zeros(len(files), dtype=np.int64)
    hours = index.audio_samples(files, ds.hop_length) / ds.sample_rate / 3600
    first = index.recordings(files)  # a long file's segments are one file
    units, unkeyed = _units(ds, files, values)
    rows = [{"subset": s, "files": int((first & (part == s)).sum()), "hours": float(hours[part == s].sum()),
             "windows": int(counts[part == s].sum()), "units": units[s]} for s in range(len(split.bounds))]
    mine = part == split.subset
    labels = []
    if ds.label_key is not None and ds.label_key in index.metadata:
        ids = index.metadata[ds.label_key].ids[files][mine]
        per_file = np.bincount(ids[ids >= 0], minlength=len(ds.label_vocabulary))
        per_window = np.bincount(ids[ids >= 0], weights=counts[mine][ids >= 0], minlength=len(ds.label_vocabulary))
        labels = [{"value": v, "files": int(n), "windows": int(w)}
                  for v, n, w in zip(ds.label_vocabulary, per_file, per_window)]
        if (ids < 0).any():
            labels.append({"value": None, "files": int((ids < 0).sum()), "windows": int(counts[mine][ids < 0].sum())})
    short = (index.frames[files] < ds.window) & mine & (not ds.rule.pad_short)
    no_content = (counts == 0) & mine & ~short
    return Summary(ds.shards.root, ds.features.to_dict(), len(ds.shards.selected), ds.window, ds.step,
                   list(ds.rule.content_names), ds.rule.content_ratio, [float(x) for x in split.parts], split.key,
                   split.subset, rows, ds.label_key, labels,
                   {"shorter than one window": int(short.sum()), "with no window passing the content rule":
                    int(no_content.sum())}, unkeyed)


def no_window_reason(ds: "SpectrogramDataset") -> Optional[str]:
    """Why this subset yields no window, with its counts (None when it yields some), and for a split where its
    units went (`spread`). From the selection already computed; only a subset that yields nothing pays more
    passes over its columns (windows before the content rule, the split's units), so opening a million files
    costs nothing more."""
    if ds.selection.total() > 0:
        return None
    split, why = ds.config.split, _no_window(ds)
    if len(split.bounds) > 1:
        files = _everything(ds).files
        units, unkeyed = _units(ds, files, split_units(ds.shards.index, split.key)[files])
        why += f"; {spread(split.parts, split.key, units, unkeyed)}"
    return why


def _no_window(ds: "SpectrogramDataset") -> str:
    """The subset's files and windows before and after the content rule: which of them is zero, and what to do."""
    selection, index, split = ds.selection, ds.shards.index, ds.config.split
    where = f"{ds.shards.root}: subset {split.subset} of split {split.parts}" if len(split.bounds) > 1 else \
        f"{ds.shards.root}: the dataset"
    files = int(index.recordings(selection.files).sum())
    if files == 0:
        return f"{where} has 0 files, so it yields no window (another split or subset, or other shards?)"
    before = int(window_counts(index, selection.files, dataclasses.replace(ds.rule, content_names=())).sum())
    seconds = ds.window * ds.hop_length / ds.sample_rate
    if before == 0:
        return (f"{where} has {files:,} files and 0 windows of {ds.window} frames ({seconds:g} s) even before the "
                "content rule: every file is shorter than one window (take a shorter window_size_sec, or "
                "pad_short=True for one padded window per short file)")
    absent = [name for name in ds.rule.content_names if name not in index.intervals]
    missing = f" ({', '.join(map(repr, absent))} not in the shard set: {sorted(index.intervals)})" if absent else ""
    return (f"{where} has {files:,} files and {before:,} windows of {ds.window} frames before the content rule, 0 "
            f"after: no window has {ds.rule.content_ratio:.0%} of its frames in the content intervals "
            f"{list(ds.rule.content_names)}{missing} (lower window_content_ratio, or choose other content_intervals)")


def one_line(ds: "SpectrogramDataset") -> str:
    """repr(ds): what it streams, without counting anything again."""
    index, files, split = ds.shards.index, ds.selection.files, ds.config.split
    hours = float(index.audio_samples(files, ds.hop_length).sum()) / ds.sample_rate / 3600
    subset = f", subset {split.subset} of {split.parts}" if len(split.bounds) > 1 else ""
    batches = f", {len(ds):,} batches of {ds.batch_size}" if ds.batch_size else ""
    return (f"SpectrogramDataset({ds.shards.root!r}{subset}: {int(index.recordings(files).sum()):,} files, "
            f"{hours:.2f} h, {ds.num_windows():,} windows of {ds.window} frames{batches}; "
            f"{_height(ds.features.to_dict(), band=False)} at {ds.sample_rate} Hz, hop {ds.hop_length})")


def _height(features: Dict[str, Any], band: bool = True) -> str:
    """The spectrogram's rows: mel bands, or a linear spectrogram's bins (with their band and transform)."""
    if features.get("kind", "logmel") == "logmel":
        return f"{features['n_mels']} mels"
    if not band:
        return f"{features['n_mels']} linear bins"
    hz = f"{features.get('f_min') or 0:g}-{features['f_max'] or features['sample_rate'] / 2:g} Hz"
    return f"{features['n_mels']} linear bins ({hz}, transform {features.get('transform_type')})"


def all_windows(ds: "SpectrogramDataset") -> List[Tuple[str, int]]:
    """Every (key, start) of a dataset's subset, from the index alone (`SpectrogramDataset.windows`)."""
    index, out = ds.shards.index, []
    for position in ds.selection.files.tolist():
        key = index.keys[position]
        offset = index.segment_of(position)[0]
        out += [(key, offset + int(s))
                for s in ds.file_windows(int(index.frames[position]), index.intervals_of(position), position)]
    return out
