"""Make reference outputs of vak 1.1.0 under tests/data/vak/, for testing spgdataset.vak against vak's own arrays.

Run it with the Python of a separate environment that has vak 1.1.0 (not the project's own environment), from the
repository root:

    ~/.pyenv/versions/3.12.1/bin/python -m venv /work/vakenv
    /work/vakenv/bin/pip install vak==1.1.0
    /work/vakenv/bin/python tools/make_vak_reference.py

It rewrites tests/data/vak/ (audio, vak's .spect.npz files, frame labels, README.md):
  1. makes four short deterministic test sounds with numpy (fixed seeds) and writes them as WAV with soundfile;
  2. calls vak's own vak.prep.spectrogram_dataset.audio_helper.make_spectrogram_files_from_audio_files once per
     configuration in CONFIGS, each into tests/data/vak/spect/<config>/; the .spect.npz files are kept exactly as vak
     wrote them, and spect_params.json beside them records the spect_params dict and the audio files used;
  3. writes simple-seq annotations (onset_s, offset_s, label) for two of the sounds and computes vak's frame labels
     for them with vak.common.labels.to_map and vak.transforms.frame_labels.functional.from_segments, for vak's own
     time bins (t in its npz) and for centred time bins (np.arange(n) * hop / rate, n = 1 + len(audio) // hop),
     into tests/data/vak/frame_labels.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "vak"
AUDIO = OUT / "audio"
SPECT = OUT / "spect"
COMMAND = "/work/vakenv/bin/python tools/make_vak_reference.py"


# ---------------------------------------------------------------- test sounds
def speech_like(rate: int = 16000, seconds: float = 0.5, seed: int = 1) -> np.ndarray:
    """Voiced segments (harmonics of a gliding f0, shaped by three formant bands), a fricative, quiet noise."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = rng.normal(0, 0.002, n)  # background noise, never digital silence
    voiced = [(0.04, 0.17, 120, 150, (700, 1200, 2500)), (0.27, 0.43, 160, 110, (400, 2000, 2800))]
    for start, stop, f0a, f0b, formants in voiced:
        i0, i1 = int(start * rate), int(stop * rate)
        seg_t = t[i0:i1] - start
        dur = stop - start
        f0 = f0a + (f0b - f0a) * seg_t / dur
        phase = 2 * np.pi * np.cumsum(f0) / rate
        seg = np.zeros(i1 - i0)
        for k in range(1, int(4000 / max(f0a, f0b)) + 1):
            fk = k * f0
            gain = sum(np.exp(-0.5 * ((fk - fm) / 120.0) ** 2) / (1 + j) for j, fm in enumerate(formants))
            seg += (gain + 0.02) * np.sin(k * phase)
        env = np.sin(np.pi * seg_t / dur) ** 0.5
        out[i0:i1] += 0.25 * env * seg / np.max(np.abs(seg))
    # fricative: noise in 3-7 kHz made in the frequency domain
    i0, i1 = int(0.19 * rate), int(0.25 * rate)
    spec = np.fft.rfft(rng.normal(0, 1, i1 - i0))
    freqs = np.fft.rfftfreq(i1 - i0, 1 / rate)
    spec[(freqs < 3000) | (freqs > 7000)] = 0
    fric = np.fft.irfft(spec, i1 - i0)
    out[i0:i1] += 0.08 * fric / np.max(np.abs(fric)) * np.hanning(i1 - i0)
    return out.astype(np.float32)


def birdsong_like(rate: int = 32000, seconds: float = 0.4, seed: int = 2) -> np.ndarray:
    """Fast frequency-modulated syllables between 2 and 8 kHz separated by near-silence; the last runs to the end."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    out = rng.normal(0, 1e-4, n)
    syllables = [  # start, stop, f_start, f_stop, fm depth, fm rate
        (0.020, 0.070, 2500, 7500, 300, 80),
        (0.0715, 0.120, 7000, 3000, 500, 120),  # 1.5 ms after the first
        (0.160, 0.230, 4000, 4500, 1500, 60),
        (0.270, 0.320, 8000, 2000, 0, 0),
        (0.350, seconds, 3000, 6000, 800, 150),  # touches the end of the file
    ]
    for start, stop, fa, fb, depth, fm in syllables:
        i0, i1 = round(start * rate), min(round(stop * rate), n)
        seg_t = np.arange(i1 - i0) / rate
        dur = (i1 - i0) / rate
        inst = fa + (fb - fa) * seg_t / dur + depth * np.sin(2 * np.pi * fm * seg_t)
        phase = 2 * np.pi * np.cumsum(inst) / rate
        env = np.minimum(1.0, np.minimum(seg_t, dur - seg_t) / 0.004)
        out[i0:i1] += 0.3 * env * (np.sin(phase) + 0.3 * np.sin(2 * phase + 0.5))
    return out.astype(np.float32)


def low_frequency(rate: int = 16000, seconds: float = 0.3, seed: int = 3) -> np.ndarray:
    """Strong hum below 500 Hz with weak tone bursts at 1-3 kHz, so that a 500-6000 Hz band-pass matters."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    out = (0.45 * np.sin(2 * np.pi * 60 * t) + 0.25 * np.sin(2 * np.pi * 180 * t + 1)
           + 0.15 * np.sin(2 * np.pi * 420 * t))
    for start, freq in [(0.05, 1000), (0.14, 2200), (0.22, 3100)]:
        i0, i1 = int(start * rate), int((start + 0.05) * rate)
        out[i0:i1] += 0.04 * np.hanning(i1 - i0) * np.sin(2 * np.pi * freq * t[i0:i1])
    out += rng.normal(0, 0.003, n)
    return out


def edge_case(rate: int = 32000, n: int = 3001, seed: int = 4) -> np.ndarray:
    """Odd length, 1000 samples of digital silence first (log10 of 0 there), then a 1-12 kHz chirp cut off at the
    end."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n)
    m = n - 1000
    t = np.arange(m) / rate
    dur = m / rate
    out[1000:] = 0.5 * np.sin(2 * np.pi * (1000 * t + (11000 / (2 * dur)) * t**2)) + rng.normal(0, 0.01, m)
    return out


# name: (function, rate, soundfile subtype)
SOUNDS = {
    "speech_16k.wav": (speech_like, 16000, "FLOAT"),
    "bird_32k.wav": (birdsong_like, 32000, "FLOAT"),
    "lowfreq_16k_pcm16.wav": (low_frequency, 16000, "PCM_16"),
    "edge_32k_pcm16.wav": (edge_case, 32000, "PCM_16"),
}

# Annotations for two of the sounds: (onset_s, offset_s, label). Includes segments very close together (closer than
# one hop) and one whose offset is the end of the file.
ANNOTATIONS = {
    "speech_16k.wav": [
        (0.04, 0.1, "a"),
        (0.1015, 0.17, "b"),  # 1.5 ms after "a"
        (0.19, 0.25, "c"),
        (0.2515, 0.43, "a"),  # 1.5 ms after "c"
        (0.46, 0.5, "b"),  # ends at the end of the file
    ],
    "bird_32k.wav": [
        (0.02, 0.07, "a"),
        (0.0715, 0.12, "b"),
        (0.16, 0.23, "c"),
        (0.27, 0.32, "a"),
        (0.35, 0.4, "c"),  # ends at the end of the file
    ],
}
LABELSET = "abc"

# ---------------------------------------------------------------- configurations
# name: (spect_params dict passed to vak, audio files). freq_cutoffs stay below the Nyquist rate of every file given.
CONFIGS = {
    "default": ({}, ["speech_16k.wav", "lowfreq_16k_pcm16.wav"]),
    "tweetynet_512_64_bp500-10000_log_thresh6.25": (
        {"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 10000], "thresh": 6.25, "transform_type": "log_spect"},
        ["bird_32k.wav", "edge_32k_pcm16.wav"],
    ),
    "fft512_64_bp500-6000_log_thresh6.25": (
        {"fft_size": 512, "step_size": 64, "freq_cutoffs": [500, 6000], "thresh": 6.25, "transform_type": "log_spect"},
        ["speech_16k.wav", "lowfreq_16k_pcm16.wav"],
    ),
    "fft256_32_bp500-6000_log": (
        {"fft_size": 256, "step_size": 32, "freq_cutoffs": [500, 6000], "transform_type": "log_spect"},
        ["speech_16k.wav", "lowfreq_16k_pcm16.wav"],
    ),
    "fft256_32_raw_thresh": (
        {"fft_size": 256, "step_size": 32, "thresh": 1e-9},
        ["lowfreq_16k_pcm16.wav"],
    ),
    "fft256_32_bp500-10000_raw": (
        {"fft_size": 256, "step_size": 32, "freq_cutoffs": [500, 10000]},
        ["bird_32k.wav", "edge_32k_pcm16.wav"],
    ),
    "fft256_64_log_plus_one": (
        {"fft_size": 256, "step_size": 64, "transform_type": "log_spect_plus_one"},
        ["speech_16k.wav", "lowfreq_16k_pcm16.wav"],
    ),
    "fft256_64_bp500-6000_log_plus_one_thresh": (
        {"fft_size": 256, "step_size": 64, "freq_cutoffs": [500, 6000], "thresh": 3e-10,
         "transform_type": "log_spect_plus_one"},
        ["speech_16k.wav", "lowfreq_16k_pcm16.wav"],
    ),
    "fft256_64_log_thresh8": (
        {"fft_size": 256, "step_size": 64, "thresh": 8, "transform_type": "log_spect"},
        ["bird_32k.wav", "edge_32k_pcm16.wav"],
    ),
    "fft512_64_log": (
        {"fft_size": 512, "step_size": 64, "transform_type": "log_spect"},
        ["edge_32k_pcm16.wav"],
    ),
}

# Frame labels: (audio file, config whose npz gives vak's time bins and whose step_size gives the centred ones)
FRAME_LABEL_CASES = [
    ("speech_16k.wav", "default"),
    ("speech_16k.wav", "fft256_32_bp500-6000_log"),
    ("bird_32k.wav", "tweetynet_512_64_bp500-10000_log_thresh6.25"),
    ("bird_32k.wav", "fft256_32_bp500-10000_raw"),
]


# ---------------------------------------------------------------- steps
def write_audio() -> None:
    AUDIO.mkdir(parents=True)
    for name, (make, rate, subtype) in SOUNDS.items():
        audio = make()
        assert np.max(np.abs(audio)) < 1.0, name
        sf.write(AUDIO / name, audio, rate, subtype=subtype)
    for name, rows in ANNOTATIONS.items():
        lines = ["onset_s,offset_s,label"] + [f"{on!r},{off!r},{label}" for on, off, label in rows]
        (AUDIO / (name + ".csv")).write_text("\n".join(lines) + "\n")


def make_spectrograms() -> None:
    from vak.prep.spectrogram_dataset.audio_helper import make_spectrogram_files_from_audio_files

    for config, (spect_params, files) in CONFIGS.items():
        out_dir = SPECT / config
        out_dir.mkdir(parents=True)
        # vak is given paths relative to the repository root, so the audio_path it saves is portable
        audio_files = [str((AUDIO / name).relative_to(ROOT)) for name in files]
        written = make_spectrogram_files_from_audio_files(
            audio_format="wav", spect_params=dict(spect_params), output_dir=str(out_dir.relative_to(ROOT)),
            audio_files=audio_files,
        )
        assert sorted(Path(p).name for p in written) == sorted(name + ".spect.npz" for name in files), written
        record = {"spect_params": spect_params, "audio_files": files,
                  "call": "vak.prep.spectrogram_dataset.audio_helper.make_spectrogram_files_from_audio_files("
                          "audio_format='wav', spect_params=spect_params, output_dir=<this folder>, "
                          "audio_files=['tests/data/vak/audio/<name>', ...])"}
        (out_dir / "spect_params.json").write_text(json.dumps(record, indent=2) + "\n")


def make_frame_labels() -> None:
    import crowsetta
    from vak.common.converters import labelset_to_set
    from vak.common.labels import to_map
    from vak.transforms.frame_labels.functional import from_segments

    labelset = labelset_to_set(LABELSET)
    labelmap = to_map(labelset, map_background=True)
    cases = []
    for name, config in FRAME_LABEL_CASES:
        # read the annotation back as vak does (vak.common.annotation: scribe.from_file(path).to_annot()), which
        # rounds onsets and offsets to milliseconds (crowsetta's to_annot(round_times=True, decimals=3))
        annot = crowsetta.Transcriber(format="simple-seq").from_file(AUDIO / (name + ".csv")).to_annot()
        onsets, offsets, labels = annot.seq.onsets_s, annot.seq.offsets_s, [str(lbl) for lbl in annot.seq.labels]
        csv_onsets, csv_offsets, csv_labels = (list(col) for col in zip(*ANNOTATIONS[name]))
        assert labels == csv_labels and np.allclose(onsets, csv_onsets, atol=6e-4)
        labels_int = [labelmap[lbl] for lbl in labels]  # as vak.prep.frame_classification.make_splits does
        info = sf.info(AUDIO / name)
        rate, n_samples = info.samplerate, info.frames
        hop = CONFIGS[config][0].get("step_size", 64)
        with np.load(SPECT / config / (name + ".spect.npz")) as npz:
            t_vak = npz["t"]
        t_centred = np.arange(1 + n_samples // hop) * hop / rate
        for kind, time_bins in (("vak_t", t_vak), ("centred", t_centred)):
            frames = from_segments(labels_int, onsets, offsets, time_bins, background_label=labelmap["background"])
            cases.append({
                "audio": name, "annotation": name + ".csv", "config": config, "sample_rate": rate,
                "n_samples": n_samples, "step_size": hop, "time_bins_kind": kind,
                "csv_onsets_s": csv_onsets, "csv_offsets_s": csv_offsets,
                "onsets_s": onsets.tolist(), "offsets_s": offsets.tolist(), "labels": labels,
                "labels_int": labels_int, "time_bins": time_bins.tolist(),
                "frame_labels_dtype": str(frames.dtype), "frame_labels": frames.tolist(),
            })
    doc = {
        "labelset": LABELSET,
        "labelmap": labelmap,
        "labelmap_json": json.dumps(labelmap),
        "how": "labelmap = vak.common.labels.to_map(vak.common.converters.labelset_to_set(labelset), "
               "map_background=True); labels_int = [labelmap[l] for l in labels]; frame_labels = "
               "vak.transforms.frame_labels.functional.from_segments(labels_int, onsets_s, offsets_s, time_bins, "
               "background_label=labelmap['background']). onsets_s/offsets_s are the annotation as vak reads it "
               "(crowsetta simple-seq to_annot(), which rounds to 3 decimals: np.around); "
               "csv_onsets_s/csv_offsets_s are the values written in the csv. time_bins_kind 'vak_t' is t from "
               "spect/<config>/<audio>.spect.npz; 'centred' is np.arange(1 + n_samples // step_size) * step_size / "
               "sample_rate.",
        "cases": cases,
    }
    (OUT / "frame_labels.json").write_text(json.dumps(doc, indent=1) + "\n")


def write_readme() -> None:
    import matplotlib
    import scipy
    import vak

    lines = [
        "# Reference outputs of vak 1.1.0",
        "",
        "Made by `tools/make_vak_reference.py`, run from the repository root with the Python of a separate environment",
        "that has vak installed (never the project's own environment):",
        "",
        "```",
        "~/.pyenv/versions/3.12.1/bin/python -m venv /work/vakenv",
        "/work/vakenv/bin/pip install vak==1.1.0",
        COMMAND,
        "```",
        "",
        (f"Versions in that environment: vak {vak.__version__}, Python {sys.version.split()[0]}, "
         f"numpy {np.__version__}, scipy {scipy.__version__}, matplotlib {matplotlib.__version__}, "
         f"soundfile {sf.__version__}."),
        "",
        "## Contents",
        "",
        "- `audio/`: the test sounds, made with numpy from fixed seeds:",
    ]
    for name, (make, rate, subtype) in SOUNDS.items():
        info = sf.info(AUDIO / name)
        doc = (make.__doc__ or "").strip()
        lines.append(f"  - `{name}`: {rate} Hz, {info.frames} samples, mono, {subtype}. {doc}")
    lines += [
        ("  - `speech_16k.wav.csv`, `bird_32k.wav.csv`: simple-seq annotations (onset_s, offset_s, label), "
         "with segments closer than one hop and one that ends at the end of the file."),
        ("- `spect/<config>/`: the `.spect.npz` files exactly as vak's "
         "`vak.prep.spectrogram_dataset.audio_helper.make_spectrogram_files_from_audio_files(audio_format='wav', ...)`"
         " wrote them (keys `s`, `f`, `t`, `audio_path`; `audio_path` is the path relative to the repository root "
         "that vak was given), and `spect_params.json` with the spect_params dict passed to vak (keys left out take "
         "vak's defaults: fft_size 512, step_size 64, no freq_cutoffs, no thresh, no transform_type) and the audio "
         "files:"),
        "",
        "| config | spect_params | audio files |",
        "| --- | --- | --- |",
    ]
    for config, (params, files) in CONFIGS.items():
        lines.append(f"| `{config}` | `{json.dumps(params)}` | {', '.join(files)} |")
    lines += [
        "",
        ("- `frame_labels.json`: frame labels from vak's own functions for the two annotated sounds: the labelset, "
         "the labelmap from `vak.common.labels.to_map(labelset, map_background=True)` (also as a JSON string), and "
         "for each case the onsets, offsets, labels, integer labels, time bins and the int8 vector from "
         "`vak.transforms.frame_labels.functional.from_segments`. Time bins are either vak's `t` from the npz of the "
         "named config (`vak_t`) or centred frames `np.arange(1 + n_samples // step_size) * step_size / sample_rate` "
         "(`centred`). `onsets_s`/`offsets_s` are the annotation as vak reads it: crowsetta's simple-seq "
         "`to_annot()` rounds times to 3 decimals (np.around), so the csv's 0.1015 becomes 0.102; the csv values "
         "are kept as `csv_onsets_s`/`csv_offsets_s`."),
        "",
        ("Notes: vak reads WAV with `soundfile.read` (float64, PCM_16 scaled by 1/32768). The `edge_32k_pcm16.wav` "
         "file starts with digital silence, so configs with `log_spect` and no thresh hold `-inf` there. Per-bin "
         "power is matplotlib.mlab.specgram's PSD (Hann window, no padding, frames not centred)."),
        "",
    ]
    (OUT / "README.md").write_text("\n".join(lines))


def main() -> None:
    os.chdir(ROOT)  # vak is given paths relative to the repository root
    if OUT.exists():
        shutil.rmtree(OUT)
    write_audio()
    make_spectrograms()
    make_frame_labels()
    write_readme()
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":  # vak's dask bag uses the processes scheduler, which spawns interpreters that import this
    main()
