"""What several datasets must share to be mixed window by window into one batch (the router's checks)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

from .dataset import SpectrogramDataset

FEATURE_PARAMETERS = ("kind", "sample_rate", "hop_length", "n_mels", "n_fft", "f_min", "f_max", "transform_type",
                      "thresh")


def where(ds: SpectrogramDataset) -> str:
    return str(ds.shards.root)


def output_layout(ds: SpectrogramDataset) -> Dict[str, Any]:
    """The keys (and spectrogram dtype) of what a dataset yields: what must agree to mix windows in a batch."""
    out = ds.config.outputs
    masks = list(out.masks) + (["valid"] if ds.rule.pad_short else [])
    layout = {"spectrogram": out.spectrogram, "audio": out.audio, "masks": sorted(masks), "meta": sorted(out.meta),
              "label": out.label is not None, "frame_labels": out.frame_labels}
    if layout["spectrogram"]:
        layout["dtype"] = ds.dtype
    return layout


def _features(ds: SpectrogramDataset) -> Dict[str, Any]:
    f = dataclasses.asdict(ds.features)
    f["f_max"] = f.get("f_max") or f["sample_rate"] / 2  # None means sample_rate / 2
    f["f_min"] = f.get("f_min") or 0.0
    f.setdefault("kind", "logmel")  # manifests of log-mel shards leave the linear parameters out
    f.setdefault("transform_type", None)
    f.setdefault("thresh", None)
    return f


def check_compatible(datasets: Sequence[SpectrogramDataset]) -> None:
    """Windows of all datasets must fit in one batch and mean the same thing: same features, window, keys."""
    if not datasets:
        return
    first, ref = datasets[0], _features(datasets[0])
    for i, ds in enumerate(datasets[1:], 1):
        feats = _features(ds)
        for name in FEATURE_PARAMETERS:
            if feats[name] != ref[name]:
                raise ValueError(f"dataset {i} ({where(ds)}) has {name}={feats[name]}, dataset 0 ({where(first)}) "
                                 f"has {name}={ref[name]}: the router mixes their windows into one batch, so "
                                 "feature parameters must agree")
        for name, label in (("window", "window size (frames)"), ("step", "window step (frames)")):
            if getattr(ds, name) != getattr(first, name):
                raise ValueError(f"dataset {i} ({where(ds)}) has {label} {name}={getattr(ds, name)}, dataset 0 "
                                 f"({where(first)}) has {name}={getattr(first, name)}: window_size_sec and "
                                 "window_offset_sec must give the same frames")
        mine, theirs = output_layout(ds), output_layout(first)
        for key in theirs.keys() | mine.keys():
            if mine.get(key) != theirs.get(key):
                raise ValueError(f"dataset {i} ({where(ds)}) yields {key}={mine.get(key)!r}, dataset 0 "
                                 f"({where(first)}) yields {key}={theirs.get(key)!r}: output_configuration "
                                 "(and pad_short, dtype) must give the same keys")


def check_labels(datasets: Sequence[SpectrogramDataset], merge: bool) -> None:
    """Datasets labelled by different metadata keys ("speaker" and "gender") would share one vocabulary of
    unrelated values: refused unless `merge` says that is meant."""
    keys = [(i, ds.label_key) for i, ds in enumerate(datasets) if ds.label_key is not None]
    if merge or len({key for _, key in keys}) < 2:
        return
    named = "; ".join(f"dataset {i} ({where(datasets[i])}) by {key!r}" for i, key in keys)
    raise ValueError(f"the router's datasets are labelled by different metadata keys: {named}. Their label ids "
                     "would index one merged vocabulary mixing the values of those keys; label them by one key "
                     "(output_configuration['label']), or pass merge_labels=True to merge them on purpose")


def agreed(datasets: Sequence[SpectrogramDataset], name: str) -> Any:
    """The value of `name` all datasets share (None when there are none)."""
    values = [getattr(ds, name) for ds in datasets]
    if not values:
        return None
    for i, value in enumerate(values):
        if value != values[0]:
            raise ValueError(f"dataset {i} has {name}={value!r}, dataset 0 has {name}={values[0]!r}: the router "
                             f"mixes windows inside each batch, so {name} must agree")
    return values[0]


def empty(ds: SpectrogramDataset, i: int) -> str:
    """`dataset i (its source)` and why it has no windows (what it warned about when it was built)."""
    return f"dataset {i} ({where(ds)}) has no windows: {ds.no_windows or 'its subset yields none'}"


def check_windows(datasets: Sequence[SpectrogramDataset], weights: Optional[Sequence[float]], stop: str) -> None:
    """An error naming the dataset without windows, and why, when the router would yield nothing: every dataset
    it draws from is empty; or under "first_exhausted" any is (it runs out before the first window, which ends
    the epoch; an explicit weight of 0 leaves it out); or under "resample" one it draws from is (no next pass)."""
    counts = [ds.num_windows() for ds in datasets]
    drawn = [i for i, n in enumerate(counts) if (n if weights is None else weights[i]) > 0]  # default weights: n
    weighted = [i for i, n in enumerate(counts) if n == 0 and (weights is None or weights[i] > 0)]
    if datasets and all(counts[i] == 0 for i in drawn):
        raise ValueError("the router has nothing to yield: " + "; ".join(empty(datasets[i], i) for i in weighted[:3])
                         + (f"; and {len(weighted) - 3} more" if len(weighted) > 3 else ""))
    if stop == "first_exhausted" and weighted:
        raise ValueError(f"{empty(datasets[weighted[0]], weighted[0])}; under stop='first_exhausted' the epoch ends "
                         "when the first dataset runs out, so it would end before any window (give it weight 0, leave "
                         "it out, or use stop='all_exhausted')")
    hollow = [i for i in drawn if counts[i] == 0]
    if stop == "resample" and hollow:
        raise ValueError(f"{empty(datasets[hollow[0]], hollow[0])}; it cannot be resampled (give it weight 0 or leave "
                         "it out)")
