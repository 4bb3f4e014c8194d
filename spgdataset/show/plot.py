"""Spectrograms as pictures: each file's spectrogram with time in seconds and bins labelled in Hz, its masks
as coloured bands underneath, and optionally the windows the content rule keeps. matplotlib is imported
only here (an optional extra)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import numpy as np

from ..errors import SpgError
from ..format.features import FeatureConfig

if TYPE_CHECKING:
    from ..read.records import FileRecord
    from ..read.dataset import SpectrogramDataset

WIDTH, HEIGHT_PER_FILE, DPI = 10.0, 3.0, 100  # inches, inches, dots per inch: 1000 x 300 pixels per file


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SpgError('pictures need matplotlib: pip install "spgdataset[plot]"') from None
    matplotlib.use("Agg")  # files, not windows: works without a display
    import matplotlib.pyplot as plt

    return plt


def read_files(ds: "SpectrogramDataset", positions: Sequence[int]) -> List["FileRecord"]:
    """The files at index `positions`, read from their shards (checked like any read)."""
    bounds, out = ds.shards.index.shard_bounds(len(ds.shards.manifest.shards)), []
    for position in positions:
        shard = int(np.searchsorted(bounds, position, side="right") - 1)
        records = ds.reader.read(shard, [int(position)])
        if not records:
            raise SpgError(f"{ds.shards.root}: could not read file {position} from shard {shard}")
        out.append(records[0])
    return out


def plot_files(ds: "SpectrogramDataset", positions: Sequence[int], out: str, windows: bool = False) -> None:
    """A PNG of the files at `positions`, WIDTH x HEIGHT_PER_FILE inches each at DPI."""
    plt = _pyplot()
    records = read_files(ds, positions)
    figure = plt.figure(figsize=(WIDTH, HEIGHT_PER_FILE * len(records)), dpi=DPI)
    grid = figure.add_gridspec(3 * len(records), 1, height_ratios=[4, 1, 1.1] * len(records), hspace=0.12)
    seconds_per_frame = ds.hop_length / ds.sample_rate
    colours = {name: f"C{k % 10}" for k, name in enumerate(sorted(ds.shards.index.intervals))}  # one per name
    for i, record in enumerate(records):
        top, bottom = figure.add_subplot(grid[3 * i]), figure.add_subplot(grid[3 * i + 1])  # then a spacer
        _spectrogram(top, record, ds.features, seconds_per_frame)
        _bands(bottom, record, ds, seconds_per_frame, windows, colours)
        bottom.sharex(top)  # each file its own time scale, labelled in seconds under its own bands
    _save(figure, out)
    plt.close(figure)


def _save(figure: Any, out: str) -> None:
    """A PNG in 128 colours (a third of the bytes; Pillow comes with matplotlib)."""
    from PIL import Image

    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=DPI, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, format="PNG",
                                                                                        optimize=True)


def _spectrogram(axis: Any, record: "FileRecord", config: FeatureConfig, seconds_per_frame: float) -> None:
    frames = record.spec.shape[1]
    axis.imshow(np.asarray(record.spec, dtype=np.float32), origin="lower", aspect="auto", cmap="magma",
                extent=(0, frames * seconds_per_frame, 0, record.spec.shape[0]), interpolation="nearest")
    centres = config.freq_bins()
    ticks = np.linspace(0, len(centres) - 1, 5).round().astype(int)
    axis.set_yticks(ticks + 0.5, [f"{centres[t]:.0f}" for t in ticks])
    axis.set_ylabel("Hz (mel)" if config.kind == "logmel" else "Hz")
    meta = ", ".join(f"{k}={v}" for k, v in sorted(record.metadata.items()))
    title = f"{record.path}  [{meta}]" if meta else record.path
    axis.set_title(title if len(title) < 110 else title[:107] + "...", fontsize=9, loc="left")
    axis.tick_params(labelbottom=False)


def _bands(axis: Any, record: "FileRecord", ds: "SpectrogramDataset", seconds_per_frame: float, windows: bool,
           colours: Dict[str, str]) -> None:
    """One row per mask (the frames inside its intervals), and with `windows` a row of the kept windows
    (each window a light span from its start, its start a tick)."""
    from ..rules.frames import interval_mask

    names = sorted(record.intervals)
    rows = names + (["windows kept"] if windows else [])
    for row, name in enumerate(names):
        mask = interval_mask(record.intervals[name], record.frames, ds.hop_length)
        axis.broken_barh(_runs(mask, seconds_per_frame), (row + 0.1, 0.8), color=colours[name])
    if windows:
        row = len(names)
        spans = [(s * seconds_per_frame, ds.window * seconds_per_frame) for s in record.starts.tolist()]
        axis.broken_barh(spans, (row + 0.1, 0.8), color="0.5", alpha=0.15)
        axis.vlines([s for s, _ in spans], row + 0.1, row + 0.9, color="0.3", linewidth=0.8)
    axis.set_yticks([r + 0.5 for r in range(len(rows))], rows, fontsize=8)
    axis.set_ylim(0, max(len(rows), 1))
    axis.set_xlabel("seconds")


def _runs(mask: np.ndarray, seconds_per_frame: float) -> List[tuple]:
    """(start, width) in seconds of each run of True frames (frame t covers [t, t + 1) hops)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(a * seconds_per_frame, (b - a) * seconds_per_frame) for a, b in zip(starts, stops)]
