"""The quickstart's main job on a built-in demo corpus: generate audio, shard it, stream windows.

    python tools/demo.py [--out demo] [--minutes 10]

Makes `demo/audio` (speech-like clips at 16/44.1/8 kHz, some stereo, plus two broken files to show the
bad-input report), runs `spg-shard` on it into `demo/shards`, then streams one epoch of 1.92 s windows
through a 2-worker DataLoader and prints what came out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from spgdataset import SpectrogramDataset
from spgdataset.demo import make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_broken_files(audio_dir: str, metadata_path: str) -> None:
    """One corrupt file and one with an interval past its end: reported, not fatal."""
    with open(os.path.join(audio_dir, "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEthis is not audio")
    with open(metadata_path, encoding="utf-8") as f:
        metadata = json.load(f)
    first = sorted(metadata)[0]
    bad = dict(metadata[first], intervals={"speech": [[0, metadata[first]["length"] + 1000]]})
    metadata["corrupt.wav"] = {"length": 16000, "intervals": {}, "metadata": {"speaker": "spk01", "gender": "f"}}
    metadata["bad_interval.wav"] = bad
    os.link(os.path.join(audio_dir, first), os.path.join(audio_dir, "bad_interval.wav"))
    with open(metadata_path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "demo"))
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    audio_dir, shard_dir = os.path.join(args.out, "audio"), os.path.join(args.out, "shards")

    metadata_path = os.path.join(audio_dir, "metadata.json")
    if not os.path.exists(metadata_path):
        print(f"demo: generating {args.minutes:.0f} minutes of audio in {audio_dir}")
        make_corpus(audio_dir, args.minutes * 60, seed=0, rates=(16000, 16000, 44100, 8000), stereo_every=5)
        add_broken_files(audio_dir, metadata_path)

    command = [sys.executable, "-m", "spgdataset.write.cli", audio_dir, metadata_path, shard_dir,
               "--config", "16k_80mel", "--with-audio", "--max-shard-mb", "4"]
    print("demo: $ spg-shard " + " ".join(command[3:]))
    subprocess.run(command, check=True)

    train = SpectrogramDataset(shard_dir, split=(0.8, 0.1, 0.1), subset=0, split_key="speaker",
                               output_configuration={"masks": ["speech"], "label": "speaker", "meta": ["gender"]})
    loader = train.loader(batch_size=64, num_workers=2)
    print(f"demo: train subset: {train.num_windows()} windows of {train.window} frames "
          f"({len(loader)} batches of 64), label vocabulary {train.label_vocabulary}")
    started, windows, speech = time.perf_counter(), 0, 0.0
    train.set_epoch(0)
    for batch in loader:
        windows += len(batch["key"])
        speech += batch["masks"]["speech"].float().mean().item() * len(batch["key"])
    elapsed = time.perf_counter() - started
    print(f"demo: one epoch: {windows} windows in {elapsed:.2f} s ({windows / elapsed:,.0f} windows/s incl. "
          f"worker start-up); speech in {100 * speech / max(windows, 1):.0f}% of window frames")
    print(f"demo: last batch: spectrogram {tuple(batch['spectrogram'].shape)} {batch['spectrogram'].dtype}, "
          f"speech mask {tuple(batch['masks']['speech'].shape)}, labels {batch['label'][:8].tolist()}..., "
          f"first window {batch['key'][0]} @ frame {int(batch['start'][0])}")
    print(f"demo: torch {torch.__version__}; shards and manifest.json are in {shard_dir}")


if __name__ == "__main__":
    main()
