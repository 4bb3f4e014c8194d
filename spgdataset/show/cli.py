"""`spg-inspect SHARDS [--plot OUT.png]`: what a shard set holds, and pictures of its files.

Without --plot it prints the manifest as a summary (files, hours, shards, bytes, feature parameters), the
label distribution of every metadata key, the windows of every subset of a split for the window parameters
given, and the bad-input report. With --plot it draws spectrograms with their masks (plot.py).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import SpgError, command_line, integer_option
from ..read.config import content_ratio, window_length
from ..read.dataset import SpectrogramDataset
from ..rules.splits import normalize_split
from .plot import plot_files

TOP_VALUES = 8  # label values shown per metadata key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spg-inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("source", metavar="SHARDS", help="shard folder, manifest.json, shard list, local or s3://")
    p.add_argument("--window-size", type=float, default=1.92, help="window in seconds (default 1.92)")
    p.add_argument("--window-offset", type=float, default=0.1, help="window step in seconds (default 0.1)")
    p.add_argument("--content-ratio", type=float, default=0.5, help="content ratio of the window rule (default 0.5)")
    p.add_argument("--masks", help="content interval names, comma-separated (default: speech, when there is one)")
    p.add_argument("--split", default="1", help="split fractions, e.g. 0.8,0.1,0.1 (default: no split)")
    p.add_argument("--split-key", help="metadata key to split by (default: the path)")
    p.add_argument("--label", help="metadata key whose balance to show per subset")
    p.add_argument("--plot", metavar="PNG", help="draw spectrograms with their masks into this PNG file")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--key", help="with --plot: the file of this sample key")
    chosen.add_argument("--path", help="with --plot: the file of this path (as in metadata.json)")
    chosen.add_argument("--random", type=integer_option(1), metavar="N", help="with --plot: N files drawn at random")
    p.add_argument("--windows", action="store_true", help="with --plot: also show the windows the content rule keeps")
    p.add_argument("--seed", type=integer_option(0), default=0, help="with --random: the seed (default 0)")
    return p


def dataset_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> SpectrogramDataset:
    split = split_of(args.split, parser)
    with warnings.catch_warnings():  # the probe's own windows are not what the user asked about
        warnings.simplefilter("ignore")
        probe = SpectrogramDataset(args.source, window_content_ratio=0, output_configuration={"masks": []})
    try:  # the window options as the dataset checks them, named as the options
        window_length("--window-size", args.window_size, probe.sample_rate, probe.hop_length)
        window_length("--window-offset", args.window_offset, probe.sample_rate, probe.hop_length)
        content_ratio("--content-ratio", args.content_ratio)
    except ValueError as exc:
        parser.error(str(exc))
    masks = args.masks.split(",") if args.masks else (["speech"] if "speech" in probe.shards.index.intervals else [])
    return SpectrogramDataset(args.source, window_size_sec=args.window_size, window_offset_sec=args.window_offset,
                              window_content_ratio=args.content_ratio, split=split, subset=0, split_key=args.split_key,
                              output_configuration={"masks": masks, "label": args.label, "spectrogram": True})


def split_of(text: str, parser: argparse.ArgumentParser) -> Tuple[float, ...]:
    """--split as fractions, checked by the split rule itself (rules/splits.py); a usage error naming --split."""
    try:
        split = tuple(float(v) for v in text.split(","))
    except ValueError:
        parser.error(f"--split {text!r}: expected fractions that sum to 1, like 0.8,0.1,0.1")
    try:
        normalize_split(split)
    except ValueError as exc:
        parser.error(f"--split {text!r}: {exc}")
    return split


def describe(ds: SpectrogramDataset) -> str:
    """The shard set (manifest and index) and the dataset's summary, as text."""
    manifest, index = ds.shards.manifest, ds.shards.index
    totals = manifest.raw.get("totals", {})
    lines = [f"{ds.shards.root}: {index.files:,} files, {totals.get('hours', 0):.2f} h, {len(manifest.shards)} "
             f"shards, {totals.get('bytes', 0) / 2**20:,.1f} MiB (format {manifest.format_version}, "
             f"{manifest.raw.get('created_by', 'spgdataset')}); with audio: {manifest.with_audio}"]
    lines.append("intervals: " + (", ".join(f"{n} ({int(np.diff(s.offsets).sum()):,} spans)"
                                           for n, s in sorted(index.intervals.items())) or "none"))
    for key, labels in sorted(index.metadata.items()):
        counts = np.bincount(labels.ids[labels.ids >= 0], minlength=len(labels.vocabulary))
        top = np.argsort(-counts, kind="stable")[:TOP_VALUES]
        shown = ", ".join(f"{labels.vocabulary[i]!r} {counts[i]:,}" for i in top)
        more = f", +{len(labels.vocabulary) - len(top)} more" if len(labels.vocabulary) > len(top) else ""
        missing = int((labels.ids < 0).sum())
        lines.append(f"metadata {key!r} ({len(labels.vocabulary)} values, files each): {shown}{more}"
                     + (f"; {missing:,} files without it" if missing else ""))
    if index.free_form:
        lines.append(f"free-form metadata (not labels): {', '.join(index.free_form)}")
    lines.append(str(ds.summary()))
    lines += report_lines(manifest.raw.get("report") or {})
    return "\n".join(lines)


def report_lines(report: Dict[str, Any], shown: int = 10) -> List[str]:
    counts, rows = report.get("counts", {}), report.get("files", [])
    lines = ["report: " + (", ".join(f"{n} {kind}" for kind, n in counts.items() if n) or "nothing left out")]
    lines += [f"  {row['kind']}: {row['path']}: {row['problem']}" for row in rows[:shown]]
    if len(rows) > shown:
        lines.append(f"  ... and {len(rows) - shown} more in manifest.json 'report'")
    return lines


def chosen_files(ds: SpectrogramDataset, args: argparse.Namespace) -> List[int]:
    """Index positions of the files to draw."""
    index = ds.shards.index
    if args.key is not None or args.path is not None:
        names = index.keys if args.key is not None else index.paths
        wanted = args.key if args.key is not None else args.path
        found = [i for i, name in enumerate(names.slice(0, index.files)) if name == wanted]
        if not found:
            raise SpgError(f"{ds.shards.root}: no file with {'key' if args.key else 'path'} {wanted!r}")
        return found[:1]
    if args.random:
        rng = np.random.default_rng(args.seed)
        return sorted(rng.choice(index.files, size=min(args.random, index.files), replace=False).tolist())
    return [0]


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.key or args.path or args.random or args.windows) and not args.plot:
        parser.error("--key, --path, --random and --windows go with --plot")
    ds = dataset_for(args, parser)
    if args.plot:
        positions = chosen_files(ds, args)
        plot_files(ds, positions, args.plot, windows=args.windows)
        print(f"spg-inspect: drew {len(positions)} file(s) into {args.plot}")
    else:
        print(describe(ds))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    command_line("spg-inspect", run, argv)


if __name__ == "__main__":
    main()
