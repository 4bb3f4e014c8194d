"""Benchmark of long recordings: the writer's peak memory and speed on files of 1, 4 and 24 hours.

    python tools/bench_long.py --out bench_long                                   # this checkout
    python tools/bench_long.py --out bench_long --baseline /tmp/before --baseline-hours 1,4

Each file is a 16 kHz mono 16-bit WAV of digital silence with one 2-second utterance (noise) at its start,
made sparse (the silence takes no disk). `spg-shard AUDIO OUT --workers 1 --quiet` runs in a fresh process per
file and version; peak RSS is that process's ru_maxrss (os.wait4; with one worker there are no child
processes), audio seconds per wall second include the interpreter's start. `--baseline DIR` runs a checkout
of another version on the `--baseline-hours` files beside it (the whole-file writer needs about 1.6 GB per
audio hour: leave 24 out). Then the reader: `SpectrogramDataset` over the longest file's shards (in segments),
in one process, iterated for `--batches` batches of 64 windows (default: a whole epoch); its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

RATE = 16000
RESULT = "LONG-RESULT "


def sparse_wav(path: str, hours: float) -> None:
    """A WAV of `hours` of silence (a sparse file) with 2 s of noise at the start."""
    import numpy as np

    samples = int(hours * 3600 * RATE)
    data_bytes = 2 * samples
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16) + b"data" + struct.pack("<I", data_bytes)
    noise = (np.random.default_rng(0).normal(0, 3000, 2 * RATE)).clip(-32768, 32767).astype("<i2")
    with open(path, "wb") as f:
        f.write(header)
        f.write(noise.tobytes())
        f.truncate(len(header) + data_bytes)


def run_writer(audio: str, target: str, src: Optional[str]) -> Dict[str, float]:
    """spg-shard on one folder in a fresh process: wall seconds and peak RSS (MB)."""
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    started = time.perf_counter()
    # `python -m` puts the working directory first on sys.path: run in the checkout wanted
    process = subprocess.Popen([sys.executable, "-m", "spgdataset.write.cli", audio, target, "--workers", "1",
                                "--quiet"], env=env, cwd=src or os.path.dirname(os.path.dirname(__file__)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"spg-shard {audio} failed: {process.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}


def job_reader(shards: str, batches: int) -> None:
    import resource

    from spgdataset import SpectrogramDataset

    ds = SpectrogramDataset(shards, batch_size=64, window_content_ratio=0, output_configuration={"masks": []})
    started, seen = time.perf_counter(), 0
    for seen, _ in enumerate(ds, 1):
        if seen >= batches:
            break
    print(RESULT + json.dumps({"batches": seen, "seconds": time.perf_counter() - started,
                               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_long")
    p.add_argument("--hours", default="1,4,24")
    p.add_argument("--baseline")
    p.add_argument("--baseline-hours", default="1,4")
    p.add_argument("--batches", type=int, default=20000)  # a whole epoch of the 24-hour file (13,500)
    p.add_argument("--reader-job")
    args = p.parse_args()
    if args.reader_job:
        job_reader(args.reader_job, args.batches)
        return
    out = os.path.abspath(args.out)
    rows: List[Dict[str, Any]] = []
    for hours in [float(h) for h in args.hours.split(",")]:
        folder = os.path.join(out, f"audio_{hours:g}h")
        os.makedirs(folder, exist_ok=True)
        wav = os.path.join(folder, "long.wav")
        if not os.path.exists(wav):
            sparse_wav(wav, hours)
        versions = {"now": None}
        if args.baseline and f"{hours:g}" in args.baseline_hours.split(","):
            versions = {"before": os.path.abspath(args.baseline), **versions}
        for label, src in versions.items():
            measured = run_writer(folder, os.path.join(out, f"shards_{hours:g}h_{label}"), src)
            row = {"hours": hours, "version": label, **measured, "audio_s_per_s": hours * 3600 / measured["seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    longest = max(float(h) for h in args.hours.split(","))
    done = subprocess.run([sys.executable, __file__, "--reader-job", os.path.join(out, f"shards_{longest:g}h_now"),
                           "--batches", str(args.batches)], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    reader = json.loads(lines[-1][len(RESULT):]) if lines else {"error": done.stderr[-2000:]}
    print(json.dumps({"reader": reader}), flush=True)
    print("\n| file | version | wall | audio-s per wall-s | writer peak RSS |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['hours']:g} h | {row['version']} | {row['seconds']:.1f} s | {row['audio_s_per_s']:,.0f} | "
              f"{row['peak_rss_mb']:,.0f} MB |")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"writer": rows, "reader": reader}, f, indent=1)


if __name__ == "__main__":
    main()
