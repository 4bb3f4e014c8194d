"""Benchmark: the cost of mixing. Windows/s of SpectrogramDatasetRouter over two datasets vs one dataset.

    python tools/bench_router.py                       # two generated 0.25 h corpora under bench_out/router/
    python tools/bench_router.py --hours 1 --repeats 9 --threads 2

One process, batch 64, windows of 1.92 s every 0.1 s with window_content_ratio=0, float32 spectrogram
(64, 80, 192) + "speech" mask + "speaker" label, no normalisation (the read rows of tools/bench.py). Each
row runs one warm-up epoch (page cache, allocator), then `--repeats` timed epochs, the rows taking turns
so that load from other processes falls on all of them. The table gives windows per CPU second of this
process (median epoch: what reading costs, steady on a shared machine) and windows per wall second (best
epoch). One torch thread unless --threads. Rows:

  dataset            SpectrogramDataset over corpus A: the baseline
  router [A]         the router over A alone: the router's own per-batch cost, no mixing
  router [A, B]      A and B, default weights (their window counts), stop="all_exhausted"
  router [A, B] 7:3  A and B at 0.7/0.3, stop="resample", epoch_length = A's window count (each dataset
                     reads all its shards per epoch, a 0.25 h dataset being one shuffle chunk, but yields
                     only part of its windows)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import List

import torch

from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter, write_shards
from spgdataset.demo import make_corpus

BATCH = 64
OUTPUTS = {"spectrogram": True, "masks": ["speech"], "label": "speaker"}


def shards_for(out: str, name: str, hours: float, seed: int) -> str:
    """A generated corpus and its shards under `out`, reused when already there."""
    folder = os.path.join(out, f"{name}_{hours:g}h")
    shards = os.path.join(folder, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        metadata = make_corpus(os.path.join(folder, "audio"), total_seconds=hours * 3600, seed=seed)
        write_shards(os.path.join(folder, "audio"), metadata, shards, max_shard_files=40, progress=False)
    return shards


def dataset(shards: str) -> SpectrogramDataset:
    return SpectrogramDataset(shards, window_content_ratio=0, normalize=False, output_configuration=OUTPUTS,
                              batch_size=BATCH, seed=1)


def epoch_rate(source, epoch: int) -> tuple:
    """(windows, windows per wall second, windows per CPU second) of one epoch iterated in this process.

    CPU seconds (this process, all its threads) are what the reader costs; on a shared machine they vary
    much less than wall time, which also counts the time other processes hold the cores.
    """
    source.set_epoch(epoch)
    wall, cpu, windows = time.perf_counter(), time.process_time(), 0
    for batch in source:
        windows += len(batch["key"])
    return windows, windows / (time.perf_counter() - wall), windows / (time.process_time() - cpu)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=0.25, help="audio per corpus (default 0.25)")
    parser.add_argument("--out", default=os.path.join("bench_out", "router"),
                        help="corpora and shards go here, reused by later runs (default bench_out/router)")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per row (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    a = shards_for(args.out, "a", args.hours, seed=1)
    b = shards_for(args.out, "b", args.hours, seed=2)
    n_a = dataset(a).num_windows()
    rows = [
        ("dataset", lambda: dataset(a)),
        ("router [A]", lambda: SpectrogramDatasetRouter([dataset(a)])),
        ("router [A, B]", lambda: SpectrogramDatasetRouter([dataset(a), dataset(b)], stop="all_exhausted")),
        ("router [A, B] 7:3", lambda: SpectrogramDatasetRouter([dataset(a), dataset(b)], weights=[0.7, 0.3],
                                                               stop="resample", epoch_length=n_a)),
    ]
    sources = [(name, make()) for name, make in rows]
    windows = {name: epoch_rate(source, 0)[0] for name, source in sources}  # warm-up epoch
    wall: dict = {name: [] for name, _ in sources}
    cpu: dict = {name: [] for name, _ in sources}
    for epoch in range(1, args.repeats + 1):  # rows interleaved, so that load from elsewhere hits all of them
        for name, source in sources:
            _, w, c = epoch_rate(source, epoch)
            wall[name].append(w)
            cpu[name].append(c)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), batch {BATCH}, {args.hours:g} h "
          f"per corpus, {args.repeats} epochs per row after a warm-up epoch, rows interleaved\n")
    print("| reader | windows/epoch | windows/CPU s (median) | vs dataset | windows/s wall (best) | vs dataset |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    base_cpu, base_wall = statistics.median(cpu["dataset"]), max(wall["dataset"])
    for name, _ in sources:
        c, w = statistics.median(cpu[name]), max(wall[name])
        print(f"| {name} | {windows[name]} | {c:,.0f} | {c / base_cpu:.2f} | {w:,.0f} | {w / base_wall:.2f} |")


if __name__ == "__main__":
    main()
