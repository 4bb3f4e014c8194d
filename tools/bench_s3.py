"""Benchmark: windows/s streaming shards from a loopback S3 server (moto) vs the same shards on local disk.

    python tools/bench_s3.py                        # 0.25 h corpus, 8 shards, 5 epochs per row
    python tools/bench_s3.py --hours 0.5 --epochs 7 --out bench_s3_out

One process, no DataLoader workers, batches of 64 windows of 1.92 s every 0.1 s (float32 spectrogram, the
"speech" mask, the "speaker" label, window_content_ratio=0). Rows:
  local disk          shards on local disk (in the page cache)
  s3 stream           every epoch streams every shard from the server (GetObject, no cache)
  s3 + cache (cold)   the first epoch with a cache folder: streams and fills it (one epoch only)
  s3 + cache (warm)   later epochs: every shard from the cache, hashed before use
The warm rows run round-robin, one epoch each per round, so that machine noise spreads over all of them;
the table gives the median. The last column separates I/O from window making: bytes/s of reading every
shard raw through open_shard (no tar parsing, no decoding).
The S3 server is moto's standalone server on 127.0.0.1 (an in-memory Python server: a floor, not a figure for
real S3, where the network and per-request latency dominate). Dummy credentials; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List

import torch

from spgdataset import SpectrogramDataset, s3, write_shards
from spgdataset.demo import make_corpus
from spgdataset.read.source import open_source
from spgdataset.storage.s3.client import client

BUCKET, PREFIX = "bench", "shards"


def start_moto(log_path: str) -> subprocess.Popen:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 30
    while True:
        try:
            opener.open(f"{endpoint}/moto-api/", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"moto server did not start; see {log_path}")
            time.sleep(0.05)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true",
                       "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "SPG_S3_CACHE_DIR"):
        os.environ.pop(name, None)
    return proc


def ensure_shards(args: argparse.Namespace) -> str:
    corpus, shards = os.path.join(args.out, f"corpus_{args.hours:g}h"), os.path.join(args.out, f"shards_{args.hours:g}h")
    if not os.path.exists(os.path.join(corpus, "metadata.json")):
        make_corpus(corpus, total_seconds=args.hours * 3600, seed=0)
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        with open(os.path.join(corpus, "metadata.json")) as f:
            files = len(json.load(f))
        write_shards(corpus, os.path.join(corpus, "metadata.json"), shards, workers=os.cpu_count(),
                     max_shard_files=-(-files // args.shards), progress=False)
    return shards


def upload(shards: str) -> str:
    c = client(s3.settings())
    c.create_bucket(Bucket=BUCKET)
    for name in sorted(os.listdir(shards)):
        if not name.startswith("."):
            c.upload_file(os.path.join(shards, name), BUCKET, f"{PREFIX}/{name}")
    return f"s3://{BUCKET}/{PREFIX}/"


def dataset(source: str) -> SpectrogramDataset:
    return SpectrogramDataset(source, window_content_ratio=0, normalize=False, dtype=torch.float32, batch_size=64,
                              output_configuration={"spectrogram": True, "masks": ["speech"], "label": "speaker"})


def epoch(ds: SpectrogramDataset, number: int) -> float:
    """Windows per second over one epoch."""
    ds.set_epoch(number)
    started, windows = time.perf_counter(), 0
    for batch in ds:
        windows += batch["spectrogram"].shape[0]
    assert windows == ds.num_windows()
    return windows / (time.perf_counter() - started)


def raw_read(source: str) -> float:
    """Seconds to read every shard's bytes through open_shard (no tar parsing, no decoding)."""
    shard_set = open_source(source)
    started = time.perf_counter()
    for shard in shard_set.shards:
        with shard_set.storage.open_shard(shard["name"]) as f:  # no size and sha256 given: never the cache
            while f.read(1 << 20):
                pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=0.25, help="demo corpus size (default 0.25)")
    parser.add_argument("--shards", type=int, default=8, help="shard count (default 8)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per row (default 5, round-robin)")
    parser.add_argument("--out", default="bench_s3_out", help="working folder (corpus and shards are reused)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    shards = ensure_shards(args)
    total_bytes = sum(s["bytes"] for s in open_source(shards).shards)
    server = start_moto(os.path.join(args.out, "moto.log"))
    try:
        url = upload(shards)
        cache = os.path.join(args.out, "cache")
        shutil.rmtree(cache, ignore_errors=True)
        local, stream, cached = dataset(shards), dataset(url), dataset(url)
        rates: Dict[str, List[float]] = {"local disk": [], "s3 stream (moto, loopback)": [],
                                         "s3 + cache (cold: fills it)": [], "s3 + cache (warm)": []}
        raw: Dict[str, float] = {}
        epoch(local, 0), epoch(stream, 0)  # warm-up: first-use costs (allocations, client) out of the figures
        s3.configure(cache_dir=cache)
        rates["s3 + cache (cold: fills it)"].append(epoch(cached, 0))
        for number in range(1, args.epochs + 1):
            for name, ds, cache_dir in (("local disk", local, None), ("s3 stream (moto, loopback)", stream, None),
                                        ("s3 + cache (warm)", cached, cache)):
                s3.configure(cache_dir=cache_dir)
                rates[name].append(epoch(ds, number))
        for name, source, cache_dir in (("local disk", shards, None), ("s3 stream (moto, loopback)", url, None),
                                        ("s3 + cache (warm)", url, cache)):
            s3.configure(cache_dir=cache_dir)
            raw[name] = total_bytes / raw_read(source) / 2**20
        s3.configure(cache_dir=None)
        manifest = open_source(shards).manifest
        print(f"\ncorpus {manifest['totals']['hours']:.2f} h, {len(manifest['shards'])} shards, "
              f"{total_bytes / 2**20:.1f} MiB, {local.num_windows()} windows per epoch; batch 64, one process; "
              f"median of {args.epochs} epochs (round-robin); cache hits {s3.stats['cache_hits']}\n")
        header = ["source", "windows/s", "vs local", "raw read MiB/s"]
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        base = statistics.median(rates["local disk"])
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"| {name} | {rate:,.0f} | {rate / base:.2f} | "
                  f"{f'{raw[name]:,.0f}' if name in raw else '-'} |")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
