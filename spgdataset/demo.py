"""A generated corpus with known answers: speech-like voiced segments and noise bursts over a quiet floor.

Used by the quickstart, the tests, the benchmarks and the training example, so nothing is downloaded.
Each file gets "speech" and "noise" intervals (samples, half-open) and metadata (speaker, gender).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import soundfile as sf

SPEAKERS = {"spk01": "f", "spk02": "m", "spk03": "f", "spk04": "m", "spk05": "f", "spk06": "m"}


def synthesize(rng: np.random.Generator, seconds: float, rate: int) -> Dict[str, Any]:
    """One clip: float32 audio in [-1, 1] and its speech/noise intervals in samples."""
    n = max(int(seconds * rate), 1)
    audio = (0.003 * rng.standard_normal(n)).astype(np.float32)
    t = np.arange(n) / rate
    speech, noise = [], []
    pos = int(rng.uniform(0.1, 0.6) * rate)
    while pos < n:
        length = int(rng.uniform(0.4, 2.5) * rate)
        stop = min(pos + length, n)
        if rng.random() < 0.75:
            f0 = rng.uniform(90, 260)
            seg = t[pos:stop]
            pitch = f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * seg))
            phase = 2 * np.pi * np.cumsum(pitch) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, 9))
            syllables = 0.5 * (1 - np.cos(2 * np.pi * rng.uniform(3, 6) * (seg - seg[0])))
            audio[pos:stop] += (rng.uniform(0.05, 0.2) * voice * syllables).astype(np.float32)
            speech.append([pos, stop])
        else:
            audio[pos:stop] += (rng.uniform(0.02, 0.1) * rng.standard_normal(stop - pos)).astype(np.float32)
            noise.append([pos, stop])
        pos = stop + int(rng.uniform(0.2, 1.5) * rate)
    np.clip(audio, -1.0, 1.0, out=audio)
    return {"audio": audio, "intervals": {"speech": speech, "noise": noise}}


def make_corpus(
    root: Union[str, os.PathLike],
    total_seconds: float = 600.0,
    seed: int = 0,
    rates: Sequence[int] = (16000,),
    min_seconds: float = 3.0,
    max_seconds: float = 20.0,
    stereo_every: Optional[int] = None,
) -> str:
    """Write WAV files under `root` and `root/metadata.json`; returns the metadata path.

    `rates` are cycled over the files; every `stereo_every`-th file is stereo (same signal, two gains).
    """
    root = os.fspath(root)
    rng = np.random.default_rng(seed)
    metadata: Dict[str, Any] = {}
    speakers = sorted(SPEAKERS)
    made, i = 0.0, 0
    while made < total_seconds:
        seconds = min(float(rng.uniform(min_seconds, max_seconds)), max(total_seconds - made, 0.5))
        rate = rates[i % len(rates)]
        clip = synthesize(rng, seconds, rate)
        speaker = speakers[i % len(speakers)]
        path = f"{speaker}/clip_{i:05d}.wav"
        os.makedirs(os.path.join(root, speaker), exist_ok=True)
        audio = clip["audio"]
        if stereo_every and i % stereo_every == stereo_every - 1:
            audio = np.stack([audio, 0.5 * audio], axis=1)
        sf.write(os.path.join(root, path), audio, rate, subtype="PCM_16")
        metadata[path] = {
            "length": len(clip["audio"]),
            "intervals": clip["intervals"],
            "metadata": {"speaker": speaker, "gender": SPEAKERS[speaker]},
        }
        made += len(clip["audio"]) / rate
        i += 1
    meta_path = os.path.join(root, "metadata.json")
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=1)
    return meta_path
