"""Benchmark of the writer at scale: many short files, Dask against the process pool, resuming on S3.

    python tools/bench_write.py --out bench_write                          # all three, this checkout only
    python tools/bench_write.py --out bench_write --baseline /tmp/before   # and an earlier checkout beside it
    python tools/bench_write.py --out bench_write --only short --files 5000 --repeats 1   # a quick look

`--baseline DIR` is a checkout of another version of spgdataset (e.g. `git worktree add /tmp/before v0.2.0`):
every job then also runs with `PYTHONPATH=DIR`, in the same session, so "before" and "after" share the machine
and its state. Every job runs in a fresh process.

- short: N clips of 2.5 s at 16 kHz (`--files`, default 20,000; generated once with spgdataset.demo's
  synthesizer, 16-bit WAV, speech/noise intervals and a speaker) written by `spg-shard --workers W --quiet`
  into a fresh folder, W = 1 and 2, `--repeats` times each (median); files/s is files over the command's
  wall time (interpreter start and imports included, as a user sees it). Then the same command again on the
  finished folder (the rerun: what a resumed or repeated job costs before it writes anything).
- dask: the 1-hour demo corpus of tools/bench.py (`corpus_1h`, reused if there), 8 shards of equal file counts:
  the local process pool (`write_shards(workers=2)`) against a Dask LocalCluster of 2 one-thread worker
  processes started beforehand (`write_shards(client=...)`), and `spg-shard --scheduler local:2` whole (cluster
  start included). Audio seconds per wall second; the outputs are compared byte for byte.
- resume: `--shards` shards (default 2,000; one 0.25 s clip each) written to a moto S3 server on 127.0.0.1
  (`python -m moto.server`, started here) by each version, then a rerun's check of which shards are finished
  (after: `finished_shards`, listings and parallel reads; before: `shard_done` per shard) and the whole rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

RESULT = "WRITE-RESULT "
HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------- corpora


def short_corpus(out: str, files: int) -> str:
    """`files` clips of 2.5 s at 16 kHz under out/short_<files>/ (reused); returns the metadata path."""
    import numpy as np
    import soundfile as sf

    from spgdataset.demo import synthesize

    root = os.path.join(out, f"short_{files}")
    meta_path = os.path.join(root, "metadata.json")
    if os.path.exists(meta_path):
        return meta_path
    rng, metadata = np.random.default_rng(0), {}
    for i in range(files):
        path = f"spk{i % 50:02d}/{i:07d}.wav"
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        clip = synthesize(rng, 2.5, 16000)
        sf.write(os.path.join(root, path), clip["audio"], 16000, subtype="PCM_16")
        metadata[path] = {"length": len(clip["audio"]), "intervals": clip["intervals"],
                          "metadata": {"speaker": f"spk{i % 50:02d}"}}
    with open(meta_path, "w") as f:
        json.dump(metadata, f)
    return meta_path


def hour_corpus(out: str) -> str:
    """tools/bench.py's 1-hour corpus (same folder name and seed), reused when present."""
    from spgdataset.demo import make_corpus

    root = os.path.join(out, "corpus_1h")
    meta_path = os.path.join(root, "metadata.json")
    return meta_path if os.path.exists(meta_path) else make_corpus(root, total_seconds=3600, seed=0)


def tiny_corpus(out: str, files: int) -> str:
    """`files` clips of 0.25 s (one shard each in the resume job)."""
    import numpy as np
    import soundfile as sf

    root = os.path.join(out, f"tiny_{files}")
    meta_path = os.path.join(root, "metadata.json")
    if not os.path.exists(meta_path):
        rng = np.random.default_rng(1)
        os.makedirs(root, exist_ok=True)
        for i in range(files):
            sf.write(os.path.join(root, f"{i:06d}.wav"), (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000,
                     subtype="PCM_16")
        with open(meta_path, "w") as f:
            json.dump({f"{i:06d}.wav": {} for i in range(files)}, f)
    return meta_path


def digest(folder: str) -> str:
    """sha256 over the published output (shards, index, manifest) of a local folder."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.startswith("shard-") or name in ("manifest.json", "index.bin", "index.msgpack"):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


# ---------------------------------------------------------------- jobs (each in a fresh process)


def job_pool(args: argparse.Namespace) -> Dict[str, Any]:
    from spgdataset import write_shards

    shutil.rmtree(args.target, ignore_errors=True)
    started = time.perf_counter()
    result = write_shards(os.path.dirname(args.meta), args.meta, args.target, workers=2, max_shard_files=args.per_shard,
                          progress=False)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "audio_s": result.audio_seconds_processed, "digest": digest(args.target)}


def job_dask(args: argparse.Namespace) -> Dict[str, Any]:
    import logging

    from distributed import Client, LocalCluster

    from spgdataset import write_shards

    shutil.rmtree(args.target, ignore_errors=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("spgdataset.write.tasks"))  # workers import torch before the clock starts
        started = time.perf_counter()
        result = write_shards(os.path.dirname(args.meta), args.meta, args.target, max_shard_files=args.per_shard,
                              client=client, progress=False)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "audio_s": result.audio_seconds_processed, "digest": digest(args.target)}


def job_resume(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the shards if the prefix has no manifest; then time the finished-shard check and a whole rerun."""
    from spgdataset import write_shards
    from spgdataset import storage
    from spgdataset.write import shards

    root, url = os.path.dirname(args.meta), args.target
    wrote = None
    if storage.at(url).read_bytes("manifest.json", 1 << 30, missing_ok=True) is None:
        started = time.perf_counter()
        write_shards(root, args.meta, url, workers=2, max_shard_files=1, progress=False)
        wrote = time.perf_counter() - started
    started = time.perf_counter()
    if hasattr(shards, "finished_shards"):
        done = len(shards.finished_shards(storage.at(url), range(args.shards)))
    else:  # 0.2: two requests per shard
        done = sum(shards.shard_done(url, k) for k in range(args.shards))
    check = time.perf_counter() - started
    started = time.perf_counter()
    result = write_shards(root, args.meta, url, workers=2, max_shard_files=1, progress=False)
    rerun = time.perf_counter() - started
    return {"write_s": wrote, "check_s": check, "done": done, "rerun_s": rerun, "reused": result.shards_reused}


JOBS = {"pool": job_pool, "dask": job_dask, "resume": job_resume}


def run_job(name: str, src: Optional[str], env: Optional[Dict[str, str]] = None, **options: Any) -> Dict[str, Any]:
    """`name` in a fresh process, with spgdataset from `src` (None: this checkout)."""
    command = [sys.executable, os.path.join(HERE, "bench_write.py"), "--job", name]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    full_env = dict(os.environ, **(env or {}))
    if src:
        full_env["PYTHONPATH"] = src
    done = subprocess.run(command, capture_output=True, text=True, env=full_env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"job {name} ({src or 'this checkout'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def timed_cli(args: List[str], src: Optional[str]) -> float:
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    started = time.perf_counter()
    # `python -m` puts the working directory first on sys.path, before PYTHONPATH: run in the checkout wanted
    done = subprocess.run([sys.executable, "-m", "spgdataset.write.cli", *args, "--quiet"], capture_output=True,
                          text=True, env=env, cwd=src or os.path.dirname(HERE))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"spg-shard {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


# ---------------------------------------------------------------- sections


def section_short(args: argparse.Namespace, versions: Dict[str, Optional[str]]) -> Dict[str, Any]:
    meta = short_corpus(args.out, args.files)
    root, rows = os.path.dirname(meta), {}
    for label, src in versions.items():
        for workers in (1, 2):
            target = os.path.join(args.out, f"short_out_{label}_w{workers}")
            runs = []
            for _ in range(args.repeats):
                shutil.rmtree(target, ignore_errors=True)
                runs.append(timed_cli([root, meta, target, "--workers", str(workers)], src))
            rerun = timed_cli([root, meta, target, "--workers", str(workers)], src)
            rows[f"{label}_w{workers}"] = {"runs": runs, "median": statistics.median(runs), "rerun": rerun,
                                           "files_per_s": args.files / statistics.median(runs), "digest": digest(target)}
            print(json.dumps({label: rows[f"{label}_w{workers}"]}), flush=True)
    return rows


def section_dask(args: argparse.Namespace) -> Dict[str, Any]:
    meta = hour_corpus(args.out)
    with open(meta) as f:
        per_shard = -(-len(json.load(f)) // 8)
    rows: Dict[str, Any] = {}
    for name in ("pool", "dask"):
        runs = [run_job(name, None, meta=meta, target=os.path.join(args.out, f"dask_out_{name}"), per_shard=per_shard)
                for _ in range(args.repeats)]
        rows[name] = {"runs": runs, "median_s": statistics.median(r["seconds"] for r in runs),
                      "audio_s": runs[0]["audio_s"], "digest": runs[0]["digest"]}
    target = os.path.join(args.out, "dask_out_cli")
    shutil.rmtree(target, ignore_errors=True)
    rows["cli"] = {"seconds": timed_cli([os.path.dirname(meta), meta, target, "--scheduler", "local:2",
                                         "--max-shard-files", str(per_shard)], None), "digest": digest(target)}
    print(json.dumps(rows), flush=True)
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_resume(args: argparse.Namespace, versions: Dict[str, Optional[str]]) -> Dict[str, Any]:
    import boto3

    port = _free_port()
    log = open(os.path.join(args.out, "moto.log"), "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                              stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true",
           "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    try:
        for _ in range(200):
            try:
                boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        meta = tiny_corpus(args.out, args.shards)
        rows = {label: run_job("resume", src, env, meta=meta, target=f"s3://bench/{label}", shards=args.shards)
                for label, src in versions.items()}
    finally:
        server.terminate()
        server.wait()
        log.close()
    print(json.dumps(rows), flush=True)
    return rows


def print_tables(results: Dict[str, Any], files: int) -> None:
    short = results.get("short")
    if short:
        print(f"\n| {files:,} clips of 2.5 s | wall (median) | files/s | rerun of the finished job |")
        print("| --- | ---: | ---: | ---: |")
        for name, row in short.items():
            print(f"| {name} | {row['median']:.2f} s | {row['files_per_s']:,.0f} | {row['rerun']:.2f} s |")
    dask = results.get("dask")
    if dask:
        print("\n| 1-hour corpus, 8 shards, 2 workers | wall (median) | audio-s per wall-s |")
        print("| --- | ---: | ---: |")
        for name in ("pool", "dask"):
            row = dask[name]
            print(f"| {name} | {row['median_s']:.2f} s | {row['audio_s'] / row['median_s']:,.0f} |")
        print(f"| spg-shard --scheduler local:2 (cluster start included) | {dask['cli']['seconds']:.2f} s | "
              f"{dask['pool']['audio_s'] / dask['cli']['seconds']:,.0f} |")
        same = len({dask['pool']['digest'], dask['dask']['digest'], dask['cli']['digest']}) == 1
        print(f"identical output: {same}")
    resume = results.get("resume")
    if resume:
        print("\n| shards on S3 (moto) | finished-shard check | whole rerun | first write |")
        print("| --- | ---: | ---: | ---: |")
        for name, row in resume.items():
            print(f"| {name} ({row['done']} finished) | {row['check_s']:.2f} s | {row['rerun_s']:.2f} s | "
                  f"{row['write_s'] or 0:.1f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_write")
    p.add_argument("--baseline", help="a checkout of another spgdataset version to run beside this one")
    p.add_argument("--only", default="short,dask,resume")
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--shards", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--job")
    p.add_argument("--meta")
    p.add_argument("--target")
    p.add_argument("--per-shard", type=int, default=0)
    args = p.parse_args()
    if args.job:
        print(RESULT + json.dumps(JOBS[args.job](args)))
        return
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    versions: Dict[str, Optional[str]] = {"after": None}
    if args.baseline:
        versions = {"before": os.path.abspath(args.baseline), "after": None}
    results: Dict[str, Any] = {}
    only = set(args.only.split(","))
    if "short" in only:
        results["short"] = section_short(args, versions)
    if "dask" in only:
        results["dask"] = section_dask(args)
    if "resume" in only:
        results["resume"] = section_resume(args, versions)
    print_tables(results, args.files)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
