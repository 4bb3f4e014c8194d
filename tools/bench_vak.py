"""Benchmark for vak users: npz files as vak makes them, against spgdataset's vak call and shards.

    python tools/bench_vak.py --out bench_vak                 # 400 clips of 4 s at 32 kHz (27 min of audio)
    python tools/bench_vak.py --out bench_vak --files 100     # a quick look

Every job runs in a fresh process (imports included, as a user sees it) on the same generated corpus:
birdsong-like chirps with a simple-seq annotation beside each file. vak's own package is not installed here
(it pulls a training stack), so its loop is rebuilt from what vak 1.1.0's spect.py does per file: soundfile
read, scipy's Butterworth band-pass, matplotlib's `specgram` (mode psd), `log_spect` with thresh, the band
cut, `np.savez`, files one after the other (vak runs them as a dask bag on dask's default scheduler for bags,
processes). Rows:

- vak's loop, one process
- `make_spectrogram_files_from_audio_files(...)`, local worker processes (all cores)
- the same with `dask_bag_kwargs={"npartitions": 8}` (threads, or the caller's Dask client)
- `spg-shard --annot-format simple-seq --spectrogram linear ...` (shards with per-label intervals)

Figures: wall seconds (median of `--repeats`), files/s and audio-seconds per wall-second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
RATE, SECONDS = 32000, 4.0
PARAMS = {"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 10000], "transform_type": "log_spect",
          "thresh": 6.25}


def corpus(out: str, files: int) -> str:
    """`files` chirps of SECONDS at RATE with a simple-seq csv each, under out/birds_<files>/ (reused)."""
    import numpy as np
    import soundfile as sf

    folder = os.path.join(out, f"birds_{files}")
    if os.path.exists(os.path.join(folder, "done")):
        return folder
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * RATE)) / RATE
    for i in range(files):
        song = np.zeros_like(t)
        rows = []
        for j, onset in enumerate(np.arange(0.2, SECONDS - 0.4, 0.5)):
            length = rng.uniform(0.1, 0.3)
            inside = (t >= onset) & (t < onset + length)
            f0 = rng.uniform(1500, 6000)
            song[inside] = 0.3 * np.sin(2 * np.pi * f0 * (t[inside] - onset) * (1 + 0.5 * (t[inside] - onset)))
            rows.append(f"{onset:.4f},{onset + length:.4f},{'abcde'[j % 5]}")
        song += rng.normal(0, 0.005, len(t))
        sf.write(os.path.join(folder, f"bird{i:05d}.wav"), song.astype("float32"), RATE, subtype="PCM_16")
        with open(os.path.join(folder, f"bird{i:05d}.wav.csv"), "w") as f:
            f.write("onset_s,offset_s,label\n" + "\n".join(rows) + "\n")
    open(os.path.join(folder, "done"), "w").close()
    return folder


def job_vak_loop(folder: str, target: str) -> None:
    """vak's per-file work, rebuilt: band-pass, specgram psd, log_spect + thresh, band, savez; one file after
    another."""
    import numpy as np
    import soundfile as sf
    from matplotlib import mlab
    from scipy.signal import butter, lfilter

    os.makedirs(target, exist_ok=True)
    low, high = PARAMS["freq_cutoffs"]
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".wav"):
            continue
        audio, rate = sf.read(os.path.join(folder, name))
        b, a = butter(5, [low / (rate / 2), high / (rate / 2)], btype="band")
        audio = lfilter(b, a, audio)
        spect, freqs, times = mlab.specgram(audio, PARAMS["fft_size"], rate,
                                            noverlap=PARAMS["fft_size"] - PARAMS["step_size"])[:3]
        spect /= spect.max()
        spect = np.log10(spect)
        spect[spect < -PARAMS["thresh"]] = -PARAMS["thresh"]
        band = (freqs >= low) & (freqs < high)
        np.savez(os.path.join(target, name + ".spect.npz"), s=spect[band], f=freqs[band], t=times,
                 audio_path=os.path.join(folder, name))


def job_spg(folder: str, target: str, dask: bool) -> None:
    from spgdataset.vak import make_spectrogram_files_from_audio_files

    annots = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".csv"))
    make_spectrogram_files_from_audio_files("wav", PARAMS, target, audio_dir=folder, annot_list=annots,
                                            annot_format="simple-seq", labelset="abcde",
                                            dask_bag_kwargs={"npartitions": 8} if dask else None)


def job_shards(folder: str, target: str) -> None:
    from spgdataset.write.cli import run

    run([folder, target, "--annot-format", "simple-seq", "--labelset", "abcde", "--spectrogram", "linear",
         "--n-fft", "512", "--hop-length", "64", "--f-min", "500", "--f-max", "10000", "--transform-type",
         "log_spect", "--thresh", "6.25", "--bandpass", "--sample-rate", str(RATE), "--quiet"])


JOBS = {"vak_loop": lambda f, t: job_vak_loop(f, t), "spg_npz": lambda f, t: job_spg(f, t, False),
        "spg_npz_dask": lambda f, t: job_spg(f, t, True), "spg_shards": job_shards}


def timed(job: str, folder: str, target: str) -> Dict[str, float]:
    """Wall seconds of one job in a fresh process."""
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(HERE, "bench_vak.py"), "--job", job, "--folder", folder,
                           "--target", target], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{job} failed:\n{done.stderr[-3000:]}")
    return {"seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_vak")
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--job")
    p.add_argument("--folder")
    p.add_argument("--target")
    args = p.parse_args()
    if args.job:
        JOBS[args.job](args.folder, args.target)
        return
    args.out = os.path.abspath(args.out)
    folder = corpus(args.out, args.files)
    audio_seconds = args.files * SECONDS
    rows: Dict[str, Any] = {}
    for job in JOBS:
        runs: List[Dict[str, float]] = [timed(job, folder, os.path.join(args.out, f"out_{job}"))
                                        for _ in range(args.repeats)]
        median = statistics.median(r["seconds"] for r in runs)
        rows[job] = {"runs": runs, "median_s": median, "files_per_s": args.files / median,
                     "audio_s_per_s": audio_seconds / median}
        print(json.dumps({job: rows[job]}), flush=True)
    print(f"\n| {args.files} clips of {SECONDS:g} s at {RATE // 1000} kHz | wall | files/s | audio-s per wall-s |")
    print("| --- | ---: | ---: | ---: |")
    for job, row in rows.items():
        print(f"| {job} | {row['median_s']:.2f} s | {row['files_per_s']:,.0f} | {row['audio_s_per_s']:,.0f} |")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
