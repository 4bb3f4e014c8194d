"""Shuffle quality of SpectrogramDataset's epoch order, to compare the order of two versions of the reader.

    python tools/bench_shuffle.py --out /tmp/shuffle_bench --hours 0.5          # this checkout
    PYTHONPATH=/tmp/before python tools/bench_shuffle.py --out /tmp/shuffle_bench --hours 0.5   # another one
    python tools/bench_shuffle.py --out /tmp/shuffle_bench --workers 2 --world 2 --json shuffle.json

A demo corpus (spgdataset.demo.make_corpus, files of 4-12 s) is written once under --out and cut into shards of
--shard-files files; both are reused when present (the shard format is stable, so an older checkout reads the
shards a newer one wrote). Then `--epochs` epochs of SpectrogramDataset(window_content_ratio=0, batch_size=64,
shuffle=True, seed=0), read in this process or through ds.loader(num_workers=--workers), for each of --world
simulated ranks. Per epoch, from batch["key"] and batch["start"] only (the public API):

  files/batch   distinct files in a batch: mean and 10th percentile (higher is better mixed)
  shards/batch  distinct shards the batch's files come from (key -> shard: a dataset over each shard alone)
  |spearman|    |rank correlation| between the order windows come in and ds.windows() (canonical) order
  overlap       files batch b shares with batch b of the epoch before (lower is better)
  first 16      distinct files of the first 16 batches (an epoch's start mixes few files)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

import spgdataset
from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus

BATCH = 64
FIRST = 16
FIELDS = ["batches", "windows", "files_mean", "files_p10", "shards_mean", "spearman", "overlap"]
HEADS = ["batches", "windows", "files/batch", "files/batch p10", "shards/batch", "\\|spearman\\|",
         "overlap with epoch before", "files of the first 16 batches"]


def build(out: str, hours: float, shard_files: int) -> str:
    """The demo corpus and its shards under `out`, made unless already there; returns the shard folder."""
    corpus = os.path.join(out, f"corpus_{hours:g}h")
    metadata = os.path.join(corpus, "metadata.json")
    if not os.path.exists(metadata):  # make_corpus writes metadata.json last
        print(f"writing the corpus ({hours:g} h) to {corpus}", file=sys.stderr)
        make_corpus(corpus, total_seconds=hours * 3600, seed=0, min_seconds=4.0, max_seconds=12.0)
    shards = os.path.join(out, f"shards_{hours:g}h_{shard_files}f")
    if not os.path.exists(os.path.join(shards, "manifest.json")):  # written last
        print(f"writing shards to {shards}", file=sys.stderr)
        write_shards(corpus, metadata, shards, max_shard_files=shard_files, workers=2, progress=False)
    return shards


def shard_of_keys(shards: str) -> Dict[str, int]:
    """File key -> shard number, from a dataset over each shard of the manifest on its own."""
    with open(os.path.join(shards, "manifest.json"), encoding="utf-8") as f:
        names = [s["name"] for s in json.load(f)["shards"]]
    found: Dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a shard whose files are all shorter than a window
        for k, name in enumerate(names):
            one = SpectrogramDataset([os.path.join(shards, name)], window_content_ratio=0)
            found.update((key, k) for key, _ in one.windows())
    return found


def spearman(order: List[int]) -> float:
    """|Spearman| between yield position and canonical position (no ties: each window once)."""
    if len(order) < 2:
        return float("nan")
    ranks = np.argsort(np.argsort(np.asarray(order)))
    return float(abs(np.corrcoef(np.arange(len(order)), ranks)[0, 1]))


def read_epoch(loader: Any, canonical: Dict[Any, int]) -> Dict[str, Any]:
    """One epoch: each batch's keys, and every window's canonical position in the order yielded."""
    keys, order = [], []
    for batch in loader:
        batch_keys = list(batch["key"])
        keys.append(batch_keys)
        order += [canonical[(k, int(s))] for k, s in zip(batch_keys, batch["start"])]
    return {"keys": keys, "order": order}


def figures(epoch: Dict[str, Any], before: Optional[Dict[str, Any]], shard_of: Dict[str, int]) -> Dict[str, Any]:
    """The figures of one epoch (`before`: the epoch before it, for the overlap)."""
    files = [set(keys) for keys in epoch["keys"]]
    distinct = np.array([len(f) for f in files], dtype=float)
    shards = [len({shard_of[k] for k in f}) for f in files]
    overlap = None
    if before is not None:
        pairs = zip(files, (set(keys) for keys in before["keys"]))
        overlap = float(np.mean([len(a & b) for a, b in pairs]))
    return {
        "batches": len(files),
        "windows": len(epoch["order"]),
        "files_mean": float(distinct.mean()) if len(files) else float("nan"),
        "files_p10": float(np.percentile(distinct, 10)) if len(files) else float("nan"),
        "shards_mean": float(np.mean(shards)) if shards else float("nan"),
        "spearman": spearman(epoch["order"]),
        "overlap": overlap,
        "first16": [int(n) for n in distinct[:FIRST]],
    }


def median_of(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median over epochs of every field (overlap over the epochs that have one; first16 position by position)."""
    out: Dict[str, Any] = {}
    for name in FIELDS:
        values = [r[name] for r in runs if r[name] is not None]
        out[name] = float(np.median(values)) if values else None
    width = min(len(r["first16"]) for r in runs)
    out["first16"] = [float(np.median([r["first16"][i] for r in runs])) for i in range(width)]
    return out


def run_rank(args: argparse.Namespace, shards: str, rank: int, shard_of: Dict[str, int]) -> Dict[str, Any]:
    """Every epoch of one simulated rank: the per-epoch figures and their medians."""
    ds = SpectrogramDataset(shards, window_content_ratio=0, batch_size=BATCH, shuffle=True, seed=0, num_workers=0,
                            shuffle_buffer=args.shuffle_buffer, file_buffer=args.file_buffer,
                            rank=rank, world_size=args.world)
    canonical = {w: i for i, w in enumerate(ds.windows())}
    loader = ds.loader(num_workers=args.workers) if args.workers else ds
    runs, before = [], None
    for e in range(args.epochs):
        started = time.perf_counter()
        ds.set_epoch(e)
        epoch = read_epoch(loader, canonical)
        runs.append(figures(epoch, before, shard_of))
        runs[-1]["seconds"] = time.perf_counter() - started
        before = epoch
    del loader
    return {"rank": rank, "epochs": runs, "median": median_of(runs)}


def cell(name: str, value: Any) -> str:
    """A table cell: counts whole, |spearman| to 3 decimals, the rest to 1."""
    if value is None:
        return "-"
    if name == "first16":
        return " ".join(f"{v:g}" for v in value)
    return f"{value:.0f}" if name in ("batches", "windows") else f"{value:.3f}" if name == "spearman" \
        else f"{value:.1f}"


def table(ranks: List[Dict[str, Any]], mean: Optional[Dict[str, Any]]) -> str:
    head = ["rank", "epoch"] + HEADS
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(rank: Any, epoch: Any, fig: Dict[str, Any]) -> None:
        cells = [str(rank), str(epoch)] + [cell(name, fig[name]) for name in FIELDS + ["first16"]]
        lines.append("| " + " | ".join(cells) + " |")

    for r in ranks:
        for e, fig in enumerate(r["epochs"]):
            row(r["rank"], e, fig)
        row(r["rank"], "median", r["median"])
    if mean is not None:
        row("mean", "median", mean)
    return "\n".join(lines)


def mean_of_ranks(ranks: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The mean over ranks of each rank's medians."""
    out: Dict[str, Any] = {}
    for name in FIELDS:
        values = [r["median"][name] for r in ranks if r["median"][name] is not None]
        out[name] = float(np.mean(values)) if values else None
    out["first16"] = [float(np.mean(v)) for v in zip(*(r["median"]["first16"] for r in ranks))]
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="folder for the corpus and shards, reused when present (default: a new temp folder)")
    p.add_argument("--hours", type=float, default=1.0, help="audio hours of the demo corpus (default 1)")
    p.add_argument("--shard-files", type=int, default=40, help="max_shard_files of the shards (default 40)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per rank (default 2; overlap needs 2)")
    p.add_argument("--shuffle-buffer", type=int, default=10000, help="SpectrogramDataset shuffle_buffer")
    p.add_argument("--file-buffer", type=int, default=32, help="SpectrogramDataset file_buffer")
    p.add_argument("--workers", type=int, default=0, help="read through ds.loader(num_workers=N) (default 0)")
    p.add_argument("--world", type=int, default=1, help="simulate W ranks, one after the other (default 1)")
    p.add_argument("--json", help="write the figures to this path")
    return p.parse_args()


def main() -> None:
    args = parse()
    out = args.out or tempfile.mkdtemp(prefix="bench_shuffle_")
    shards = build(out, args.hours, args.shard_files)
    shard_of = shard_of_keys(shards)
    ranks = [run_rank(args, shards, r, shard_of) for r in range(args.world)]
    mean = mean_of_ranks(ranks) if args.world > 1 else None
    package = os.path.dirname(os.path.abspath(spgdataset.__file__))
    version = getattr(spgdataset, "__version__", "?")
    print(f"spgdataset {version} from {package}; shards {shards} ({max(shard_of.values()) + 1} shards, "
          f"{len(shard_of)} files); workers {args.workers}, world {args.world}, shuffle_buffer "
          f"{args.shuffle_buffer}, file_buffer {args.file_buffer}\n")
    print(table(ranks, mean))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": vars(args), "package": package, "version": version, "shards": shards,
                       "ranks": ranks, "mean_of_ranks": mean}, f, indent=1)


if __name__ == "__main__":
    main()
