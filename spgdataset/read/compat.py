"""What several datasets must share to be mixed window by window into one batch (the router's checks)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

from .dataset import SpectrogramDataset

FEATURE_PARAMETERS = ("kind", "sample_rate", "hop_length", "n_mels", "n_fft", "f_min", "f_max", "transform_type",
                      "thresh")


def where(ds: SpectrogramDataset) -> str:
    return str(ds.shards.root)


def output_layout(ds: SpectrogramDataset) -> Dict[str, Any]:
    """The keys (and spectrogram dtype) of what a dataset yields: what must agree to mix windows in a batch."""
    out = ds.outputs
    masks = list(out["masks"] or []) + (["valid"] if ds.pad_short else [])
    layout = {"spectrogram": bool(out["spectrogram"]), "audio": bool(out["audio"]), "masks": sorted(masks),
              "meta": sorted(out["meta"] or []), "label": out["label"] is not None}
    if layout["spectrogram"]:
        layout["dtype"] = ds.dtype
    return layout


def _features(ds: SpectrogramDataset) -> Dict[str, Any]:
    f = dict(ds.features)
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
