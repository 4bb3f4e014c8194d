"""Benchmark of resampling to 16 kHz: wall time per audio second and peak memory, for common and hostile rates.

    python tools/bench_resample.py --out bench_resample                      # 10 s per pair, then 10 min at 2 MHz
    python tools/bench_resample.py --out bench_resample --long-minutes 0     # the pairs only

Each pair runs in a fresh process (`--job`): a `--seconds` long 16-bit mono WAV of noise at the input rate is
written in pieces (so making it costs no memory), then `read_audio` (the writer's whole-file path: decode,
downmix, resample) runs on it with one torch thread, as the writer's tasks do. Reported: wall ms per audio
second of `read_audio` and of the resampling alone (`Resampler.whole` on the decoded samples), and peak RSS
(ru_maxrss) above what the process had after importing torch and the writer (making the file counts too). For
each pair the size of torchaudio's kernel is computed, not built: new_step x (2 width + orig_step) float64
values, which is what `torchaudio.transforms.Resample` allocated before write/resample.py (and several
temporaries of that size).
`--long-minutes` then runs a file of that length at 2,000,003 Hz through `BlockSource` in the blocks
`featurize_long` reads (BLOCK_FRAMES frames of hop 160), the path long files take.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

PAIRS = [16000, 44100, 48000, 44101, 96001, 2000003, 8001]  # input rates, each to 16 kHz
TARGET = 16000
RESULT = "RESAMPLE-RESULT "


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def noise_wav(path: str, rate: int, seconds: float) -> int:
    """A 16-bit mono WAV of noise, written 2**18 samples at a time; its length in samples."""
    import numpy as np
    import soundfile as sf

    total, rng = int(seconds * rate), np.random.default_rng(rate)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
        for start in range(0, total, 1 << 18):
            f.write(rng.normal(0, 0.1, min(1 << 18, total - start)).astype(np.float32))
    return total


def kernel_figures(rate: int) -> Dict[str, Any]:
    from spgdataset.write.resample import KERNEL_LIMIT, Resampler

    if rate == TARGET:
        return {"path": "none"}
    rule = Resampler(rate, TARGET, direct=True)  # builds nothing
    return {"torchaudio_kernel_values": rule.kernel_size, "torchaudio_kernel_gb_float64": rule.kernel_size * 8 / 1e9,
            "path": "direct" if rule.kernel_size > KERNEL_LIMIT else "torchaudio", "taps_per_output": rule.taps}


def job_whole(rate: int, seconds: float, folder: str) -> Dict[str, Any]:
    """read_audio on `seconds` of audio at `rate`, then the resampling alone."""
    import soundfile as sf
    import torch

    from spgdataset.write.audio import read_audio
    from spgdataset.write.resample import resampler_for

    torch.set_num_threads(1)
    path = os.path.join(folder, f"{rate}.wav")
    baseline = peak_mb()  # before the file is made: what making it costs counts too (a few MB)
    noise_wav(path, rate, seconds)
    started = time.perf_counter()
    audio = read_audio(path, TARGET)[0]
    wall = time.perf_counter() - started
    peak = peak_mb()
    resample_ms = None
    if rate != TARGET:
        signal = sf.read(path, dtype="float32")[0]
        started = time.perf_counter()
        resampler_for(rate, TARGET).whole(signal)
        resample_ms = 1000 * (time.perf_counter() - started) / seconds
    return {"rate": rate, "seconds": seconds, "outputs": len(audio), "read_audio_ms_per_s": 1000 * wall / seconds,
            "resample_ms_per_s": resample_ms, "baseline_mb": baseline, "peak_mb": peak,
            "peak_above_baseline_mb": peak - baseline, **kernel_figures(rate)}


def job_blocks(rate: int, seconds: float, folder: str) -> Dict[str, Any]:
    """A long file through BlockSource, in featurize_long's blocks."""
    import soundfile as sf
    import torch

    from spgdataset.write.blocks import BlockSource
    from spgdataset.write.featurize import BLOCK_FRAMES

    torch.set_num_threads(1)
    path = os.path.join(folder, f"{rate}-long.wav")
    baseline = peak_mb()
    noise_wav(path, rate, seconds)
    started = time.perf_counter()
    with sf.SoundFile(path) as sound:
        source = BlockSource(sound, TARGET, path)
        step = BLOCK_FRAMES * 160
        for lo in range(0, source.samples_count, step):
            source.samples(lo, min(lo + step, source.samples_count))
    wall = time.perf_counter() - started
    peak = peak_mb()
    return {"rate": rate, "seconds": seconds, "blocks_ms_per_s": 1000 * wall / seconds, "baseline_mb": baseline,
            "peak_mb": peak, "peak_above_baseline_mb": peak - baseline, **kernel_figures(rate)}


def run_job(rate: int, seconds: float, mode: str, folder: str) -> Dict[str, Any]:
    """One job in a fresh process, so that its peak RSS is its own."""
    command = [sys.executable, __file__, "--job", str(rate), "--seconds", str(seconds), "--mode", mode,
               "--folder", folder]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"{rate} Hz ({mode}) failed:\n{run.stderr[-3000:]}")
    return json.loads(next(line for line in run.stdout.splitlines() if line.startswith(RESULT))[len(RESULT):])


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| input rate | path | taps/output | read_audio ms per audio s | resampling ms per audio s | "
             "peak RSS above baseline (MB) | torchaudio's kernel (values, GB float64) |", "|" + " --- |" * 7]
    for r in rows:
        resample = "-" if r.get("resample_ms_per_s") is None else f"{r['resample_ms_per_s']:.1f}"
        wall = f"{r['read_audio_ms_per_s']:.1f}" if "read_audio_ms_per_s" in r else \
            f"{r['blocks_ms_per_s']:.1f} (BlockSource, {r['seconds'] / 60:g} min)"
        kernel = "-" if r["path"] == "none" else \
            f"{r['torchaudio_kernel_values']:,} ({r['torchaudio_kernel_gb_float64']:.3g})"
        taps = "-" if r["path"] == "none" else r["taps_per_output"]
        lines.append(f"| {r['rate']:,} | {r['path']} | {taps} | {wall} | {resample} | "
                     f"{r['peak_above_baseline_mb']:.0f} (of {r['peak_mb']:.0f}) | {kernel} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench_resample", help="where results.json goes")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per pair (default 10)")
    parser.add_argument("--long-minutes", type=float, default=10.0, help="the 2,000,003 Hz long file; 0: skip")
    parser.add_argument("--job", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="whole", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job is not None:
        job = job_whole if args.mode == "whole" else job_blocks
        print(RESULT + json.dumps(job(args.job, args.seconds, args.folder)))
        return
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.out) as folder:
        for rate in PAIRS:
            rows.append(run_job(rate, args.seconds, "whole", folder))
            print(f"{rate} Hz: done", file=sys.stderr)
        if args.long_minutes > 0:
            rows.append(run_job(2000003, 60 * args.long_minutes, "blocks", folder))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
