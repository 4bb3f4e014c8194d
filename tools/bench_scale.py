"""Benchmark: a reader over an index of 100k, 1M and 10M files, and a real corpus of many short files.

    python tools/bench_scale.py --out bench_scale                 # 100k, 1M, 10M fabricated + 100k real files
    python tools/bench_scale.py --out bench_scale --sizes 100000,1000000 --real-files 0
    python tools/bench_scale.py --out bench_scale --format 1 --sizes 100000,1000000 --real-files 0  # rows index
    python tools/bench_scale.py --out bench_scale --sizes 20000 --seconds 10 --repeats 7 --real-files 0 --no-workers

Fabricated shard sets: the index (format 2 columns, or format 1 msgpack rows with `--format 1`) repeats the
rows of a real 60-file corpus written by spg-shard, each copy with its own key and path, 1,000 files per
shard; the manifest matches it, the shards themselves are not written (construction and len() never open
one). `--seconds S` makes the template's 60 clips all S s long (demo speech/noise intervals, a few per file):
with S = 10 at 16 kHz, hop 160, each file has 1000 frames and 81 candidate windows for the content rule, the
case where its count costs most per file. Every measurement runs in a fresh `python tools/bench_scale.py --job
...` process (`--repeats R` runs of the construct job: median and min, also in us per file; `--profile`: the
construct job's constructor + len() under cProfile, top 25 by tottime on stderr):

- construct: `SpectrogramDataset(source, output_configuration={"masks": ["speech"], "label": "speaker"},
  batch_size=64)` then `len()`: wall seconds, and peak RSS (VmHWM) above a bare `import torch` process;
- workers: the same dataset in a DataLoader with 2 workers (fork); each worker plans its share of epoch 0
  (`epoch_order` and `plan_epoch`) and reports the private memory it added (Private_Clean + Private_Dirty of
  /proc/self/smaps_rollup, after the plan minus before it) and its whole private memory;
- real: N WAV files of 2.5 s at 8 kHz (speech interval, speaker) written by `spg-shard --workers 2`
  (files/s: the writer's per-file cost), then the time from `import spgdataset` to the first batch of 64,
  in one process and through `loader(num_workers=2)`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict

import numpy as np

RESULT = "SCALE-RESULT "
OUTPUTS = {"masks": ["speech"], "label": "speaker"}


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def private_kb() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))


# ---------------------------------------------------------------- fabricated shard sets


def template(out: str, seconds: float = 0.0) -> str:
    """A real corpus of demo clips (60 of 3-20 s, or 60 of `seconds` s) written by spg-shard (reused when
    present)."""
    from spgdataset import write_shards
    from spgdataset.demo import make_corpus

    tag = f"_{seconds:g}s" if seconds else ""
    shards = os.path.join(out, f"template{tag}_shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        audio = os.path.join(out, f"template{tag}_audio")
        if seconds:
            meta = make_corpus(audio, total_seconds=60 * seconds, seed=1, min_seconds=seconds, max_seconds=seconds)
        else:
            meta = make_corpus(audio, total_seconds=690, seed=1)
        write_shards(audio, meta, shards, workers=2, progress=False)
    return shards


def fabricate(out: str, files: int, fmt: int, per_shard: int = 1000, seconds: float = 0.0) -> str:
    """A manifest + index of `files` files repeating the template's rows (no shards written)."""
    import hashlib

    from spgdataset.format.index import decode, pack_columns
    from spgdataset.format.names import MANIFEST_NAME

    folder = os.path.join(out, f"fabricated_{files}_f{fmt}" + (f"_{seconds:g}s" if seconds else ""))
    if os.path.exists(os.path.join(folder, MANIFEST_NAME)):
        return folder
    os.makedirs(folder, exist_ok=True)
    src = template(out, seconds)
    manifest = json.load(open(os.path.join(src, MANIFEST_NAME)))
    index = decode(open(os.path.join(src, "index.bin"), "rb").read())
    copies = np.arange(files) % index.files  # file i repeats template file copies[i]
    shard = np.arange(files) // per_shard
    manifest["shards"] = [{"name": f"shard-{k:06d}.tar", "files": int(n), "frames": int(f), "seconds": 0.0,
                           "bytes": 1, "sha256": "0" * 64}
                          for k, (n, f) in enumerate(zip(np.bincount(shard), np.bincount(shard, index.frames[copies])))]
    if fmt == 1:
        import msgpack

        keys, paths = file_names(index, copies)
        rows = [dict(index.row(int(c)), key=keys[i], path=paths[i], shard=f"shard-{i // per_shard:06d}.tar")
                for i, c in enumerate(copies)]
        data = msgpack.packb(rows, use_bin_type=True)
        name = "index.msgpack"
    else:
        data = pack_columns(*_tiled_columns(index, copies, shard))
        name = "index.bin"
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    manifest.update(format_version=fmt, index=name, index_sha256=hashlib.sha256(data).hexdigest(),
                    index_bytes=len(data))
    manifest["totals"]["files"] = files
    with open(os.path.join(folder, MANIFEST_NAME), "w") as text:
        json.dump(manifest, text)
    return folder


def file_names(index: Any, copies: np.ndarray):
    """Keys and paths of the copies, as spg-shard names files: `spk01/clip_00012_0001234.wav`."""
    stems = [index.paths[i][: -len(".wav")] for i in range(index.files)]
    paths = [f"{stems[c]}_{i:07d}.wav" for i, c in enumerate(copies.tolist())]
    keys = [f"{i:07d}_{p[:-4].replace('/', '_')}" for i, p in enumerate(paths)]
    return keys, paths


def _tiled_columns(index: Any, copies: np.ndarray, shard: np.ndarray):
    """Header and columns of a columnar index whose file i is template file copies[i] in shard shard[i]."""
    from spgdataset.rules.splits import path_units

    n = len(copies)
    keys, paths = file_names(index, copies)
    columns: Dict[str, np.ndarray] = {
        "shard": shard.astype("<i4"), "frames": index.frames[copies], "samples": index.samples[copies],
        "path_unit": path_units(paths).astype("<u8"), "annotated": index.annotated[copies]}
    for name, values in (("key", keys), ("path", paths)):
        data = "".join(values).encode()
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=n)
        columns[f"{name}.offsets"] = np.concatenate(([0], np.cumsum(lengths))).astype("<i8")
        columns[f"{name}.data"] = np.frombuffer(data, dtype="|u1")
    interval_names = list(index.intervals)
    for i, name in enumerate(interval_names):
        spans = index.intervals[name]
        per_file = np.diff(spans.offsets)[copies]
        first = np.repeat(spans.offsets[:-1][copies], per_file)
        within = np.arange(int(per_file.sum())) - np.repeat(np.cumsum(per_file) - per_file, per_file)
        columns[f"iv{i}.offsets"] = np.concatenate(([0], np.cumsum(per_file))).astype("<i8")
        columns[f"iv{i}.start"] = spans.start[first + within]
        columns[f"iv{i}.stop"] = spans.stop[first + within]
    for j, (key, labels) in enumerate(index.metadata.items()):
        columns[f"meta{j}"] = labels.ids[copies]
    header = {"files": n, "intervals": interval_names,
              "metadata": [[k, v.vocabulary] for k, v in index.metadata.items()], "free_form": index.free_form}
    return header, columns


# ---------------------------------------------------------------- jobs (each in a fresh process)


def job_torch(args: argparse.Namespace) -> Dict[str, Any]:
    import torch  # noqa: F401

    return {"peak_rss_mb": vm_hwm_kb() / 1024}


def job_construct(args: argparse.Namespace) -> Dict[str, Any]:
    import torch  # noqa: F401

    from spgdataset import SpectrogramDataset

    base = vm_hwm_kb()
    profile = None
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    started = time.perf_counter()
    ds = SpectrogramDataset(args.source, output_configuration=OUTPUTS, batch_size=64)
    n = len(ds)
    seconds = time.perf_counter() - started
    if profile is not None:
        import pstats

        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return {"seconds": seconds, "len": n, "windows": ds.num_windows(), "peak_rss_mb": vm_hwm_kb() / 1024,
            "torch_rss_mb": base / 1024}


def job_workers(args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from spgdataset import SpectrogramDataset

    ds = SpectrogramDataset(args.source, output_configuration=OUTPUTS, batch_size=64, num_workers=2)

    class Probe(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            before = private_kb()
            if hasattr(ds, "epoch_order"):  # the epoch's order (files, chunks), then this worker's ranges of it
                plan = [ds.epoch_order(0), ds.plan_epoch(0, info.id, info.num_workers)]
            elif hasattr(ds, "plan_epoch"):
                plan = ds.plan_epoch(0, info.id, info.num_workers)
            else:  # spgdataset 0.1 (the "before" row: run with PYTHONPATH at a checkout of it)
                plan = ds._plan(info.id, info.num_workers, 0)
            after = private_kb()
            yield {"worker": info.id, "shards": len(plan), "added_kb": after - before, "private_kb": after}

    rows = list(DataLoader(Probe(), num_workers=2, batch_size=None, multiprocessing_context="fork"))
    del torch
    return {"workers": rows}


def job_first_batch(args: argparse.Namespace) -> Dict[str, Any]:
    started = time.perf_counter()
    from spgdataset import SpectrogramDataset

    imported = time.perf_counter() - started
    ds = SpectrogramDataset(args.source, output_configuration=OUTPUTS, batch_size=64)
    constructed = time.perf_counter() - started - imported
    items = iter(ds.loader(num_workers=args.workers)) if args.workers else iter(ds)
    next(items)
    return {"import_s": imported, "construct_s": constructed, "first_batch_s": time.perf_counter() - started,
            "workers": args.workers,
            "files": int(ds.shards.index.files), "peak_rss_mb": vm_hwm_kb() / 1024}


def run_job(name: str, **options: Any) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--job", name]
    for key, value in options.items():
        if isinstance(value, bool):  # a flag
            cmd += [f"--{key.replace('_', '-')}"] if value else []
        else:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    if options.get("profile"):
        print(done.stderr, file=sys.stderr)
    return json.loads(lines[-1][len(RESULT):])


def construct_runs(source: str, files: int, repeats: int, profile: bool) -> Dict[str, Any]:
    """The construct job `repeats` times (fresh processes, one after the other): the median run, with every
    run's seconds and the median and min in us per file (single runs of a few ms drift with the machine)."""
    runs = [run_job("construct", source=source, profile=profile and i == 0) for i in range(max(repeats, 1))]
    seconds = sorted(r["seconds"] for r in runs)
    median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return dict(median, runs=[r["seconds"] for r in runs], us_per_file=1e6 * median["seconds"] / files,
                min_us_per_file=1e6 * seconds[0] / files)


# ---------------------------------------------------------------- real corpus of short files


def real_corpus(out: str, files: int) -> Dict[str, Any]:
    """`files` clips of 2.5 s at 8 kHz (reused when present), sharded by the CLI with 2 workers."""
    import soundfile as sf

    audio, shards = os.path.join(out, f"real_{files}"), os.path.join(out, f"real_{files}_shards")
    meta_path = os.path.join(audio, "metadata.json")
    if not os.path.exists(meta_path):
        rng, metadata = np.random.default_rng(0), {}
        t = np.arange(20000) / 8000
        for i in range(files):
            path = f"s{i % 100:03d}/{i:07d}.wav"
            os.makedirs(os.path.join(audio, os.path.dirname(path)), exist_ok=True)
            x = 0.01 * rng.standard_normal(20000)
            x[4000:16000] += 0.2 * np.sin(2 * np.pi * 180 * t[4000:16000])
            sf.write(os.path.join(audio, path), x.astype(np.float32), 8000, subtype="PCM_16")
            metadata[path] = {"length": 20000, "intervals": {"speech": [[4000, 16000]]},
                              "metadata": {"speaker": f"s{i % 100:03d}"}}
        with open(meta_path, "w") as f:
            json.dump(metadata, f)
    shutil.rmtree(shards, ignore_errors=True)  # a fresh write, not a resume
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "spgdataset.write.cli", audio, meta_path, shards, "--workers", "2",
                           "--sample-rate", "8000", "--n-fft", "200", "--hop-length", "80", "--quiet"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    seconds = time.perf_counter() - started
    return {"files": files, "write_s": seconds, "files_per_s": files / seconds, "shards": shards}


# ---------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_scale")
    p.add_argument("--sizes", default="100000,1000000,10000000")
    p.add_argument("--format", type=int, default=2, choices=[1, 2])
    p.add_argument("--real-files", type=int, default=100000)
    p.add_argument("--job")
    p.add_argument("--source")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0, help="template clips of this length (0: 3-20 s)")
    p.add_argument("--repeats", type=int, default=1, help="construct job runs per size")
    p.add_argument("--profile", action="store_true", help="cProfile the first construct run")
    p.add_argument("--no-workers", action="store_true", help="skip the DataLoader workers job")
    args = p.parse_args()
    if args.job:
        result = {"torch": job_torch, "construct": job_construct, "workers": job_workers,
                  "first_batch": job_first_batch}[args.job](args)
        print(RESULT + json.dumps(result))
        return
    os.makedirs(args.out, exist_ok=True)
    results: Dict[str, Any] = {"torch": run_job("torch"), "sizes": []}
    print(f"bare import torch: peak RSS {results['torch']['peak_rss_mb']:.0f} MB", flush=True)
    for files in [int(s) for s in args.sizes.split(",") if s]:
        source = fabricate(args.out, files, args.format, seconds=args.seconds)
        row = {"files": files, "format": args.format, "seconds": args.seconds,
               "index_mb": sum(os.path.getsize(os.path.join(source, n)) for n in os.listdir(source)) / 2**20}
        row["construct"] = construct_runs(source, files, args.repeats, args.profile)
        row["workers"] = [] if args.no_workers else run_job("workers", source=source)["workers"]
        results["sizes"].append(row)
        print(json.dumps(row), flush=True)
    if args.real_files:
        real = real_corpus(args.out, args.real_files)
        real["first_batch"] = [run_job("first_batch", source=real["shards"], workers=w) for w in (0, 2)]
        results["real"] = real
        print(json.dumps(real), flush=True)
    print_tables(results)
    tag = f"_{args.seconds:g}s" if args.seconds else ""
    with open(os.path.join(args.out, f"results_f{args.format}{tag}.json"), "w") as f:
        json.dump(results, f, indent=1)


def print_tables(results: Dict[str, Any]) -> None:
    torch_mb = results["torch"]["peak_rss_mb"]
    print(f"\n| files in the index | index files | constructor + len() | peak RSS | above `import torch` "
          f"({torch_mb:.0f} MB) | private memory each of 2 workers adds (total private) |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for row in results["sizes"]:
        c = row["construct"]
        workers = ", ".join(f"{w['added_kb'] / 1024:.1f} MB ({w['private_kb'] / 1024:.0f})" for w in row["workers"])
        print(f"| {row['files']:,} | {row['index_mb']:.0f} MB | {c['seconds']:.2f} s | {c['peak_rss_mb']:,.0f} MB | "
              f"{c['peak_rss_mb'] - torch_mb:,.0f} MB | {workers} |")
    for row in results["sizes"]:
        c = row["construct"]
        print(f"{row['files']:,} files ({row.get('seconds') or '3-20'} s): constructor + len() "
              f"{c['us_per_file']:.2f} us per file (median of {len(c['runs'])}; min {c['min_us_per_file']:.2f}), "
              f"{c['windows']:,} windows")
    real = results.get("real")
    if real:
        print(f"\nreal corpus: {real['files']:,} files of 2.5 s at 8 kHz, written by spg-shard --workers 2 in "
              f"{real['write_s']:.0f} s ({real['files_per_s']:.0f} files/s)")
        for fb in real["first_batch"]:
            print(f"  first batch of 64, {fb['workers']} workers: {fb['first_batch_s']:.2f} s from `import spgdataset` "
                  f"(import {fb['import_s']:.2f} s, construct + len {fb['construct_s']:.2f} s), peak RSS "
                  f"{fb['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
