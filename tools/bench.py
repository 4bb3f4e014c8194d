"""Benchmark: write shards, then read 1.92 s / 0.1 s windows with SpectrogramDataset and with baselines.

    python tools/bench.py --hours 1 --out bench_out      # full run (about 5-10 minutes on 2 cores)
    python tools/bench.py --quick --out bench_quick      # smoke run: 0.1 h, few windows
    python tools/bench.py --out bench_out --job spg_1proc --profile   # cProfile one reader (needs shards)

Every measurement runs in a fresh subprocess (`--job NAME`), so peak RSS is per measurement. The parent
prints markdown tables and writes <out>/results.json. See tools/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional

import msgpack
import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import BatchSampler, DataLoader, Dataset
from webdataset.tariterators import group_by_keys

import spgdataset
from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus
from spgdataset.format.codec import npy_view
from spgdataset.format.features import FeatureConfig, values_out_of_range
from spgdataset.format.names import SPEC
from spgdataset.format.tar import tar_members
from spgdataset.read.memory import ChunkMemory
from spgdataset.rules.frames import interval_mask
from spgdataset.rules.windows import window_frames
from spgdataset.write.audio import read_audio
from spgdataset.write.logmel import LogMel

RESULT_TAG = "BENCH-RESULT "
BATCH = 64
WINDOW_SEC, STEP_SEC = 1.92, 0.1
FEATURES = FeatureConfig()  # 16 kHz, n_fft 400, hop 160, 80 mels, float16 storage
W = window_frames(WINDOW_SEC, FEATURES.sample_rate, FEATURES.hop_length)  # 192 frames
S = window_frames(STEP_SEC, FEATURES.sample_rate, FEATURES.hop_length)  # 10 frames
MASK, LABEL = "speech", "speaker"


# ---------------------------------------------------------------- paths and sizes


def paths(args: argparse.Namespace) -> Dict[str, str]:
    """Everything lives under --out; the corpus and the npz files are cached per corpus size."""
    tag = f"{args.hours:g}h"
    corpus = os.path.join(args.out, f"corpus_{tag}")
    return {
        "corpus": corpus,
        "metadata": os.path.join(corpus, "metadata.json"),
        "shards": os.path.join(args.out, "shards_w1"),  # the readers read these
        "npz": os.path.join(args.out, f"npz_{tag}"),
    }


def limits(args: argparse.Namespace) -> Dict[str, int]:
    """Bounded window counts for the slow baselines (and for the copy loop)."""
    if args.quick:
        return {"otf_windows": 320, "npz_batches": 30, "copy_batches": 300}
    return {"otf_windows": 3000, "npz_batches": 300, "copy_batches": 2000}


def load_metadata(args: argparse.Namespace) -> Dict[str, Any]:
    with open(paths(args)["metadata"], encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------- memory (/proc, no psutil)


def proc_status_kb(pid: Any, field: str) -> Optional[int]:
    """A `kB` field of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current), or None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def child_pids() -> List[int]:
    """Direct children of this process (DataLoader workers), from /proc/<pid>/stat."""
    me, found = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # field 4; the name may hold spaces
            if ppid != me:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if b"resource_tracker" not in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


class WorkerPeaks:
    """Peak RSS of the child processes, sampled now and then while they are alive (VmHWM only grows)."""

    def __init__(self, every: float = 0.25) -> None:
        self.every, self.last, self.peaks_kb = every, 0.0, {}

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.every:
            return
        self.last = now
        for pid in child_pids():
            hwm = proc_status_kb(pid, "VmHWM")
            if hwm is not None:
                self.peaks_kb[pid] = max(hwm, self.peaks_kb.get(pid, 0))


# ---------------------------------------------------------------- measuring a stream of batches


def consume(batches: Iterable[Dict[str, Any]], started: float, limit: Optional[int] = None,
            workers: Optional[WorkerPeaks] = None) -> Dict[str, Any]:
    """Iterate `batches` (dicts with a (B, n_mels, W) "spectrogram"); `started` is when the reader was set up.

    Steady rate = windows after the first batch / time after the first batch (the first batch's time is
    reported separately). Whole-epoch rate = every window / time from `started`, and CPU seconds and cores busy
    (CPU seconds / wall seconds) of this process over the same span from this call on: what an epoch costs.
    Stops after `limit` windows (counted after the first batch) or at the end of the epoch.
    `workers`: sample the peak RSS of child processes (scanning /proc costs a few ms: only with workers).
    """
    first_at, first_cpu, counted, first_shape, everything = None, 0.0, 0, None, 0
    called, called_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        spec = batch["spectrogram"]
        everything += spec.shape[0]
        if first_at is None:
            first_at, first_cpu = time.perf_counter(), time.process_time()
            first_shape = f"{tuple(spec.shape)} {str(spec.dtype).replace('torch.', '')}"
        else:
            counted += spec.shape[0]
        if workers is not None:
            workers.sample()
        if limit is not None and counted >= limit:
            break
    ended, cpu = time.perf_counter(), time.process_time() - first_cpu
    whole_cpu = time.process_time() - called_cpu
    if workers is not None:
        workers.sample(force=True)
    seconds = ended - first_at if first_at is not None else float("nan")
    return {
        "whole_windows_per_s": everything / (ended - started) if everything else 0.0,
        "whole_cpu_s": whole_cpu,
        "whole_cores_busy": whole_cpu / (ended - called) if everything else 0.0,
        "whole_windows_per_cpu_s": everything / whole_cpu if whole_cpu > 0 else 0.0,
        "windows_per_s": counted / seconds if counted else 0.0,
        "main_cpu_percent": 100 * cpu / seconds if counted else 0.0,
        "windows_measured": counted,
        "measured_over": "full epoch" if limit is None else f"{counted} windows",
        "first_batch_s": (first_at - started) if first_at is not None else float("nan"),
        "first_batch_shape": first_shape,
        "worker_peak_rss_mb": [] if workers is None else sorted(round(kb / 1024) for kb in workers.peaks_kb.values()),
    }


def full_epochs(make_batches: Callable[[int], Iterable[Dict[str, Any]]], started: float, epochs: int,
                workers: Optional[WorkerPeaks] = None) -> Dict[str, Any]:
    """`epochs` full epochs one after the other: rate = median of the epochs' rates (the machine is shared,
    a median resists a neighbour's burst); first batch = the first epoch's, counted from `started`."""
    runs = []
    for epoch in range(epochs):
        batches = make_batches(epoch)
        runs.append(consume(batches, started if epoch == 0 else time.perf_counter(), workers=workers))
    result = dict(runs[0])
    result.update(
        windows_per_s=float(np.median([r["windows_per_s"] for r in runs])),
        main_cpu_percent=float(np.median([r["main_cpu_percent"] for r in runs])),
        **{name: float(np.median([r[name] for r in runs])) for name in ("whole_windows_per_s", "whole_cpu_s",
                                                                        "whole_cores_busy",
                                                                        "whole_windows_per_cpu_s")},
        whole_epoch_rates=[round(r["whole_windows_per_s"]) for r in runs],
        epoch_rates=[round(r["windows_per_s"]) for r in runs],
        later_first_batch_s=[round(r["first_batch_s"], 3) for r in runs[1:]],
        windows_measured=sum(r["windows_measured"] for r in runs),
        measured_over=f"{epochs} full epoch{'s, median' if epochs > 1 else ''}",
        worker_peak_rss_mb=runs[-1]["worker_peak_rss_mb"],
    )
    return result


def window_dict(spec: np.ndarray, mask: np.ndarray, label: int) -> Dict[str, Any]:
    """One window as the baselines emit it; torch's default collate stacks these into a batch."""
    return {"spectrogram": spec, "masks": {MASK: mask}, "label": label}


# ---------------------------------------------------------------- setup: corpus, npz


def ensure_corpus(args: argparse.Namespace) -> None:
    p = paths(args)
    if os.path.exists(p["metadata"]):  # make_corpus writes metadata.json last
        return
    shutil.rmtree(p["corpus"], ignore_errors=True)
    started = time.perf_counter()
    make_corpus(p["corpus"], total_seconds=args.hours * 3600, seed=0)
    log(f"corpus: {args.hours:g} h in {p['corpus']} ({time.perf_counter() - started:.0f} s)")


def ensure_npz(args: argparse.Namespace) -> None:
    """One uncompressed .npz per audio file (float16 spectrogram + speech mask), copied out of the shards."""
    p = paths(args)
    index_path = os.path.join(p["npz"], "index.json")
    if os.path.exists(index_path):
        return
    shutil.rmtree(p["npz"], ignore_errors=True)
    os.makedirs(p["npz"])
    manifest = read_manifest(p["shards"])
    labels = {v: i for i, v in enumerate(manifest["labels"][LABEL])}
    index = []
    for sample in wds.WebDataset(shard_urls(p["shards"]), shardshuffle=False, empty_check=False):
        spec, info = decode_npy(sample["spec.npy"]), msgpack.unpackb(sample["info.msgpack"], raw=False)
        mask = interval_mask(info["intervals"].get(MASK, []), info["frames"], FEATURES.hop_length)
        name = sample["__key__"] + ".npz"
        np.savez(os.path.join(p["npz"], name), spec=spec.astype(np.float16), speech=mask)
        index.append({"file": name, "frames": info["frames"], "label": labels.get(info["metadata"].get(LABEL), -1)})
    with open(index_path, "w") as f:
        json.dump(index, f)


def read_manifest(shard_dir: str) -> Dict[str, Any]:
    with open(os.path.join(shard_dir, "manifest.json")) as f:
        return json.load(f)


def shard_urls(shard_dir: str) -> List[str]:
    return [os.path.join(shard_dir, s["name"]) for s in read_manifest(shard_dir)["shards"]]


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ---------------------------------------------------------------- write side


def job_write(args: argparse.Namespace, workers: int, with_audio: bool = False) -> Dict[str, Any]:
    """write_shards into a fresh folder; with_audio runs on every 10th file only (bytes/hour estimate)."""
    p = paths(args)
    out = os.path.join(args.out, "shards_audio" if with_audio else f"shards_w{workers}")
    shutil.rmtree(out, ignore_errors=True)
    names = sorted(load_metadata(args))
    files = names[::10] if with_audio and not args.quick else None
    shard_files = math.ceil(len(names) / args.shards)  # --shards equal-count shards: both workers get a share
    started = time.perf_counter()
    result = write_shards(p["corpus"], p["metadata"], out, files=files, workers=workers, with_audio=with_audio,
                          max_shard_files=shard_files, progress=False)
    wall = time.perf_counter() - started
    totals = result.manifest["totals"]
    return {
        "workers": workers,
        "with_audio": with_audio,
        "files": result.files_processed,
        "audio_hours": totals["hours"],
        "wall_s": wall,
        "audio_s_per_s": result.audio_seconds_processed / wall,
        "files_per_s": result.files_processed / wall,
        "bytes_per_audio_hour": totals["bytes"] / totals["hours"],
        "shards": totals["shards"],
        "sha256": [s["sha256"] for s in result.manifest["shards"]],
    }


def job_decode_logmel(args: argparse.Namespace) -> Dict[str, Any]:
    """The bare work of the writer: read_audio + LogMel, one process, one torch thread, no shard writing."""
    torch.set_num_threads(1)
    p = paths(args)
    logmel = LogMel(FEATURES)
    seconds, files = 0.0, 0
    started = time.perf_counter()
    for name in sorted(load_metadata(args)):
        audio, rate, length, _ = read_audio(os.path.join(p["corpus"], name), FEATURES.sample_rate)
        logmel(audio)
        seconds += length / rate
        files += 1
    wall = time.perf_counter() - started
    return {"workers": 1, "files": files, "audio_hours": seconds / 3600, "wall_s": wall,
            "audio_s_per_s": seconds / wall, "files_per_s": files / wall}


# ---------------------------------------------------------------- read side: SpectrogramDataset


def job_spg(args: argparse.Namespace, workers: int = 0, threads: Optional[int] = None,
            normalize: bool = False, small_pages: bool = False, batch_threads: int = 1) -> Dict[str, Any]:
    """SpectrogramDataset: iterated directly (workers=0) or behind ds.loader(num_workers=workers).

    small_pages: each chunk in a fresh torch.empty tensor (4 KB pages, faulted in anew), as before
    spgdataset/memory.py: what the huge-page, reused chunk memory buys.
    """
    if threads:
        torch.set_num_threads(threads)
    if small_pages:
        ChunkMemory.empty = lambda self, shape, dtype: torch.empty(shape, dtype=dtype)  # this job's process only
    started = time.perf_counter()
    ds = SpectrogramDataset(
        paths(args)["shards"], window_size_sec=WINDOW_SEC, window_offset_sec=STEP_SEC, window_content_ratio=0,
        normalize=normalize, dtype=torch.float32, batch_size=BATCH, batch_threads=batch_threads,
        output_configuration={"spectrogram": True, "masks": [MASK], "label": LABEL},
    )
    loader = ds if workers == 0 else ds.loader(batch_size=BATCH, num_workers=workers)  # persistent workers

    def epoch(n: int) -> Iterable[Dict[str, Any]]:
        ds.set_epoch(n)
        return iter(loader)

    result = full_epochs(epoch, started, args.epochs, WorkerPeaks() if workers else None)
    result["epoch_windows"] = ds.num_windows()
    return result


def job_map_style(args: argparse.Namespace, first_files: int = 50, batches: bool = False) -> Dict[str, Any]:
    """ds.map_style() in random order, one process: `DataLoader(batch_size=64, sampler=<a permutation of every
    window>, num_workers=0)` with torch's default collate, a memory cache that holds the whole set (each file is
    read once, in the first epoch). Before it, on another dataset: the first access of `first_files` files spread
    over the set (their first window, nothing cached, the shards in the page cache).

    batches: `DataLoader(batch_size=None, sampler=BatchSampler(<the permutation>, 64))` instead, each batch
    gathered by the dataset at once (windows[list]) with no collate."""
    shards = paths(args)["shards"]
    kwargs = dict(window_size_sec=WINDOW_SEC, window_offset_sec=STEP_SEC, window_content_ratio=0, normalize=False,
                  dtype=torch.float32, output_configuration={"spectrogram": True, "masks": [MASK], "label": LABEL},
                  max_memory_cache=8 << 30)
    for url in shard_urls(shards):  # warm: the page cache holds the shards, as after the spg_1proc row
        with open(url, "rb") as f:
            f.read()
    probe = SpectrogramDataset(shards, **kwargs)
    firsts = np.concatenate(([0], np.cumsum(probe.selection.counts)[:-1]))[probe.selection.counts > 0]
    access, times = probe.map_style(), []
    for i in firsts[np.linspace(0, len(firsts) - 1, min(first_files, len(firsts))).astype(int)].tolist():
        started = time.perf_counter()
        access[i]
        times.append(1000 * (time.perf_counter() - started))
    started = time.perf_counter()
    ds = SpectrogramDataset(shards, **kwargs)
    windows = ds.map_style()

    def epoch(n: int) -> Iterable[Dict[str, Any]]:
        order = np.random.default_rng(n).permutation(len(windows)).tolist()
        if batches:
            return iter(DataLoader(windows, batch_size=None, sampler=BatchSampler(order, BATCH, drop_last=False)))
        return iter(DataLoader(windows, batch_size=BATCH, sampler=order, num_workers=0))

    result = full_epochs(epoch, started, args.epochs)
    result.update(epoch_windows=len(windows), files_read=windows.reads, cached_mb=round(windows.cache_bytes / 2**20),
                  first_access_ms_median=float(np.median(times)), first_access_ms_p90=float(np.percentile(times, 90)),
                  first_access_ms_max=max(times), first_access_files=len(times))
    return result


def job_values_check(args: argparse.Namespace, repeats: int = 3) -> Dict[str, Any]:
    """The reader's check of stored values (values_out_of_range: NaN, infinities, beyond the storage range)
    timed alone over every spectrogram of the shard set, median of `repeats` passes: what the first epoch of
    a local shard set, and every epoch from S3, pays for it (later local epochs skip it, read/decode.py)."""
    specs = []
    for url in shard_urls(paths(args)["shards"]):
        with open(url, "rb") as f:
            specs += [npy_view(s[SPEC]) for s in group_by_keys(tar_members(f.read(), url))]
    passes = []
    for _ in range(repeats):
        started = time.perf_counter()
        bad = sum(values_out_of_range(spec) for spec in specs)
        passes.append(time.perf_counter() - started)
    assert bad == 0
    seconds, values = float(np.median(passes)), sum(spec.size for spec in specs)
    return {"check_s": seconds, "files": len(specs), "us_per_file": 1e6 * seconds / len(specs),
            "mb_per_s": values * specs[0].itemsize / seconds / 1e6, "passes_s": [round(p, 4) for p in passes]}


# ---------------------------------------------------------------- read side: (a) plain webdataset


def wds_decode(sample: Dict[str, Any]) -> Dict[str, Any]:
    info = msgpack.unpackb(sample["info.msgpack"], raw=False)
    return {"spec": decode_npy(sample["spec.npy"]), "info": info}


def wds_windows(samples: Iterable[Dict[str, Any]], labels: Dict[Any, int]) -> Iterable[Dict[str, Any]]:
    """Every window of every file, each as its own float32 array."""
    for sample in samples:
        spec, info = sample["spec"], sample["info"]
        frames = spec.shape[1]
        mask = interval_mask(info["intervals"].get(MASK, []), frames, FEATURES.hop_length)
        label = labels.get(info["metadata"].get(LABEL), -1)
        for s in range(0, frames - W + 1, S):
            yield window_dict(spec[:, s:s + W].astype(np.float32), mask[s:s + W], label)


def job_wds(args: argparse.Namespace, workers: int = 0) -> Dict[str, Any]:
    """What a user writes with webdataset alone: per-window items, shuffle(10000), DataLoader collate."""
    started = time.perf_counter()
    shard_dir = paths(args)["shards"]
    labels = {v: i for i, v in enumerate(read_manifest(shard_dir)["labels"][LABEL])}
    pipeline = (wds.WebDataset(shard_urls(shard_dir), shardshuffle=False, empty_check=False)
                .map(wds_decode)
                .compose(lambda src: wds_windows(src, labels))
                .shuffle(10000))
    loader = DataLoader(pipeline, batch_size=BATCH, num_workers=workers)  # workers restart every epoch
    return full_epochs(lambda n: iter(loader), started, args.epochs, WorkerPeaks() if workers else None)


# ---------------------------------------------------------------- read side: (b) on the fly from WAV


class OnTheFlyWindows(Dataset):
    """Map-style: window i = (file, start); reads that audio slice from the WAV and computes its log-mel."""

    def __init__(self, args: argparse.Namespace) -> None:
        metadata = load_metadata(args)
        labels = {v: i for i, v in enumerate(sorted({m["metadata"][LABEL] for m in metadata.values()}))}
        self.root, self.logmel, self.files, self.windows = paths(args)["corpus"], LogMel(FEATURES), [], []
        for name in sorted(metadata):
            entry = metadata[name]
            frames = 1 + entry["length"] // FEATURES.hop_length
            mask = interval_mask(entry["intervals"].get(MASK, []), frames, FEATURES.hop_length)
            self.files.append((name, mask, labels[entry["metadata"][LABEL]]))
            self.windows.extend((len(self.files) - 1, s) for s in range(0, frames - W + 1, S))

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        file, start = self.windows[i]
        name, mask, label = self.files[file]
        hop = FEATURES.hop_length
        audio, _ = sf.read(os.path.join(self.root, name), start=start * hop, stop=(start + W) * hop,
                           dtype="float32", always_2d=False)
        spec = self.logmel(audio)[:, :W]  # W * hop samples give W + 1 centred frames
        return window_dict(spec, mask[start:start + W], label)


def job_otf(args: argparse.Namespace, workers: int = 0) -> Dict[str, Any]:
    """One torch thread, as in a DataLoader worker: small STFTs lose time to a second intra-op thread."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    loader = DataLoader(OnTheFlyWindows(args), batch_size=BATCH, shuffle=True, num_workers=workers)
    return consume(loader, started, limits(args)["otf_windows"], WorkerPeaks() if workers else None)


# ---------------------------------------------------------------- read side: (c) one .npz per file


class NpzWindows(Dataset):
    """Map-style over every (file, start); each window np.load()s its file's .npz (no cache)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.folder = paths(args)["npz"]
        with open(os.path.join(self.folder, "index.json")) as f:
            self.files = json.load(f)
        self.windows = [(k, s) for k, row in enumerate(self.files) for s in range(0, row["frames"] - W + 1, S)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        file, start = self.windows[i]
        row = self.files[file]
        with np.load(os.path.join(self.folder, row["file"]), allow_pickle=False) as z:
            spec = z["spec"][:, start:start + W].astype(np.float32)
            mask = z["speech"][start:start + W]
        return window_dict(spec, mask, row["label"])


def job_npz(args: argparse.Namespace, workers: int = 0) -> Dict[str, Any]:
    started = time.perf_counter()
    loader = DataLoader(NpzWindows(args), batch_size=BATCH, shuffle=True, num_workers=workers)
    return consume(loader, started, limits(args)["npz_batches"] * BATCH, WorkerPeaks() if workers else None)


# ---------------------------------------------------------------- read side: (d) memory-copy limit


def job_copy(args: argparse.Namespace, threads: Optional[int] = None, source: str = "float16") -> Dict[str, Any]:
    """Random (80, 192) windows of a corpus-sized in-memory array, gathered into a float32 (64, 80, 192) batch.

    source="float16": index_select into a float16 batch, then copy_ into the float32 batch (index_select
    cannot convert). source="float32": the array was converted to float32 beforehand (as chunks.Chunk
    does), one index_select straight into the float32 batch.
    """
    if threads:
        torch.set_num_threads(threads)
    frames = read_manifest(paths(args)["shards"])["totals"]["frames"]
    dtype = torch.float16 if source == "float16" else torch.float32
    data = torch.randn(FEATURES.n_mels, frames, generator=torch.Generator().manual_seed(0)).to(dtype)
    view = data.as_strided((frames - W + 1, FEATURES.n_mels, W), (1, frames, 1))
    out = torch.empty((BATCH, FEATURES.n_mels, W), dtype=torch.float32)
    gathered = torch.empty((BATCH, FEATURES.n_mels, W), dtype=dtype)
    starts = torch.randint(0, frames - W + 1, (limits(args)["copy_batches"] + 1, BATCH),
                           generator=torch.Generator().manual_seed(1))

    def batches() -> Iterable[Dict[str, Any]]:
        for row in starts:
            if source == "float16":
                torch.index_select(view, 0, row, out=gathered)
                out.copy_(gathered)
            else:
                torch.index_select(view, 0, row, out=out)
            yield {"spectrogram": out}

    result = consume(batches(), time.perf_counter())
    result["measured_over"] = f"{result['windows_measured']} windows"
    return result


class EmptyBatches(torch.utils.data.IterableDataset):
    """Batches of the benchmark's shape with nothing computed: what the DataLoader hand-off alone costs."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self) -> Iterable[Dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        share = self.count // (info.num_workers if info else 1)
        for _ in range(share):
            yield {"spectrogram": torch.empty((BATCH, FEATURES.n_mels, W)),
                   "masks": {"speech": torch.zeros((BATCH, W), dtype=torch.bool)},
                   "label": torch.zeros(BATCH, dtype=torch.int64), "start": torch.zeros(BATCH, dtype=torch.int64)}


def job_handoff(args: argparse.Namespace) -> Dict[str, Any]:
    """The ceiling of any reader behind a 2-worker DataLoader here: batches cross, nothing is built."""
    loader = torch.utils.data.DataLoader(EmptyBatches(limits(args)["copy_batches"]), batch_size=None,
                                         num_workers=2, prefetch_factor=4)
    result = consume(loader, time.perf_counter())
    result["measured_over"] = f"{result['windows_measured']} windows"
    return result


# ---------------------------------------------------------------- the jobs and the table

WRITE_JOBS: Dict[str, Callable[[argparse.Namespace], Dict[str, Any]]] = {
    "write_w1": lambda a: job_write(a, 1),
    "write_w2": lambda a: job_write(a, 2),
    "decode_logmel": job_decode_logmel,
    "write_audio": lambda a: job_write(a, 2, with_audio=True),
}

# name -> (description, processes doing the work, function)
READ_JOBS: Dict[str, Any] = {
    "spg_1proc": ("SpectrogramDataset, 1 process, default threads", 1, job_spg),
    "spg_1proc_1thread": ("SpectrogramDataset, 1 process, 1 torch thread", 1, lambda a: job_spg(a, threads=1)),
    "spg_1proc_2gatherers": ("SpectrogramDataset, 1 process, batch_threads=2", 1,
                             lambda a: job_spg(a, batch_threads=2)),
    "spg_1proc_norm": ("SpectrogramDataset, 1 process, normalize=True", 1, lambda a: job_spg(a, normalize=True)),
    "spg_1proc_small_pages": ("SpectrogramDataset, 1 process, chunks in fresh 4 KB pages (before memory.py)", 1,
                              lambda a: job_spg(a, small_pages=True)),
    "spg_2workers": ("SpectrogramDataset.loader(num_workers=2)", 2, lambda a: job_spg(a, workers=2)),
    "spg_map_style": ("SpectrogramDataset.map_style(), random order, DataLoader(batch 64), 1 process, files cached", 1,
                      job_map_style),
    "spg_map_style_batches": ("SpectrogramDataset.map_style(), random order, DataLoader(batch_size=None, "
                              "sampler=BatchSampler(64)), 1 process, files cached", 1,
                              lambda a: job_map_style(a, batches=True)),
    "wds_1proc": ("(a) plain webdataset, 1 process", 1, job_wds),
    "wds_2workers": ("(a) plain webdataset, DataLoader 2 workers", 2, lambda a: job_wds(a, workers=2)),
    "otf_1proc": ("(b) on the fly: WAV slice + log-mel per window, 1 process, 1 thread", 1, job_otf),
    "otf_2workers": ("(b) on the fly, DataLoader 2 workers", 2, lambda a: job_otf(a, workers=2)),
    "npz_1proc": ("(c) .npz per file, np.load per window, 1 process", 1, job_npz),
    "npz_2workers": ("(c) .npz per file, DataLoader 2 workers", 2, lambda a: job_npz(a, workers=2)),
    "copy_1thread": ("(d) copy limit: f16 gather + f32 convert, 1 thread", 1, lambda a: job_copy(a, threads=1)),
    "copy_threads": ("(d) copy limit: f16 gather + f32 convert, default threads", 1, job_copy),
    "copy_f32_1thread": ("(d) copy limit: f32 source gather, 1 thread", 1,
                         lambda a: job_copy(a, threads=1, source="float32")),
    "handoff_2workers": ("(e) DataLoader hand-off limit: 2 workers returning empty float32 batches", 2, job_handoff),
}

BASELINE_WDS, BASELINE_COPY = "wds_1proc", "copy_1thread"
CHECK_JOBS = {"values_check": job_values_check}  # a cost on its own, not a reader: a line under the read table


def busy_cpu_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def settle(timeout: float = 30.0, idle_cores: float = 0.05) -> None:
    """Flush, then wait until the machine is quiet: after the write jobs (hundreds of MB written and
    deleted) the kernel kept about 0.2 cores busy for several seconds, slowing the first read rows."""
    os.sync()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = busy_cpu_seconds()
        time.sleep(0.5)
        if (busy_cpu_seconds() - before) / 0.5 < idle_cores:
            return
    log(f"the machine did not settle below {idle_cores} busy cores in {timeout:.0f} s; read rows may be slow")


def own_children_cpu_seconds() -> float:
    """CPU-seconds of our finished jobs, their DataLoader workers and write pools included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_job(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Run one job in a fresh Python process; its result is the JSON line tagged RESULT_TAG on stdout.

    Also records `others_load`: CPU cores busy with other people's processes during the job (the machine
    may be shared; a reader measured while a neighbour takes a core is slower than it should be).
    """
    command = [sys.executable, os.path.abspath(__file__), "--job", name, "--out", args.out,
               "--hours", str(args.hours), "--shards", str(args.shards), "--epochs", str(args.epochs)]
    command += ["--quick"] if args.quick else []
    started, busy, own = time.perf_counter(), busy_cpu_seconds(), own_children_cpu_seconds()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    others_load = max(0.0, (busy_cpu_seconds() - busy) - (own_children_cpu_seconds() - own)) / wall
    tagged = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not tagged:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        log(f"{name}: FAILED (exit {proc.returncode})\n{tail}")
        return {"job": name, "error": tail.splitlines()[-1] if tail else f"exit {proc.returncode}"}
    result = json.loads(tagged[-1][len(RESULT_TAG):])
    result["others_load"] = round(others_load, 2)
    log(f"{name}: done in {wall:.1f} s (other processes kept {others_load:.2f} cores busy)")
    return result


def median_run(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The run with the median rate of `--write-repeats` fresh runs: a write job lasts 1-3 s, and single
    runs of the same job differed by 30% on this shared machine. All rates are kept in `rates`."""
    runs = [run_job(name, args) for _ in range(max(1, args.write_repeats))]
    runs.sort(key=lambda r: r.get("audio_s_per_s", 0.0))
    result = dict(runs[len(runs) // 2])
    result["rates"] = [round(r.get("audio_s_per_s", 0.0)) for r in runs]
    return result


def run_in_this_process(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The child side of run_job: do the job, add this process's peak RSS."""
    if name == "baseline":
        result: Dict[str, Any] = {}
    elif name in WRITE_JOBS:
        result = WRITE_JOBS[name](args)
    elif name in CHECK_JOBS:
        result = CHECK_JOBS[name](args)
    else:
        result = READ_JOBS[name][2](args)
    result["job"] = name
    result["main_peak_rss_mb"] = round(proc_status_kb("self", "VmHWM") / 1024)
    result["torch_threads"] = torch.get_num_threads()
    return result


def profile_job(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Run a job under cProfile, in this thread and in every thread it starts (SpectrogramDataset builds
    batches in a read-ahead thread); print the merged top 25 by tottime and by cumtime to stderr."""
    profilers = [cProfile.Profile()]

    def start_in_new_thread(*_: Any) -> None:  # first profile event of a new thread: hand over to cProfile
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start_in_new_thread)
    try:
        result = profilers[0].runcall(run_in_this_process, name, args)
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
    stats = pstats.Stats(*profilers, stream=sys.stderr)
    print(f"{len(profilers)} thread(s) profiled; time waiting for another thread shows as lock acquire",
          file=sys.stderr)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumtime").print_stats(25)
    return result


def import_torch_rss_mb() -> int:
    """Peak RSS of a bare `python -c "import torch"`, the floor under every reader's number."""
    code = ("import torch\nfor line in open('/proc/self/status'):\n"
            "    if line.startswith('VmHWM:'): print(line.split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return round(int(out.split()[-1]) / 1024)


def markdown_table(header: List[str], rows: List[List[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def report(results: Dict[str, Any]) -> str:
    write, read = results["write"], results["read"]
    rows = []
    for name in ("write_w1", "write_w2", "decode_logmel", "write_audio"):
        r = write.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append([name, "error: " + r["error"]] + [""] * 6)
            continue
        label = {"write_w1": "write_shards, workers=1", "write_w2": "write_shards, workers=2",
                 "decode_logmel": "bare read_audio + LogMel, 1 process, 1 thread",
                 "write_audio": "write_shards --with-audio, workers=2" + ("" if results["config"]["quick"]
                                                                          else ", every 10th file")}[name]
        size = r.get("bytes_per_audio_hour")
        rows.append([label, f"{r['audio_hours']:.2f}", r["audio_s_per_s"], r["files_per_s"],
                     f"{size / 2**20:.1f}" if size else "", f"{r['wall_s']:.1f}",
                     " / ".join(f"{v:,}" for v in r.get("rates", [])), f"{r['others_load']:.2f}"])
    text = "### Write side\n\n" + markdown_table(
        ["", "audio h", "audio s / s (median run)", "files / s", "MiB per audio hour", "wall s",
         "every run, audio s / s", "others' load"], rows)

    wds_rate = read.get(BASELINE_WDS, {}).get("windows_per_s")
    copy_rate = read.get(BASELINE_COPY, {}).get("windows_per_s")
    rows = []
    for name, (label, procs, _) in READ_JOBS.items():
        r = read.get(name)
        if r is None:
            continue
        if "error" in r:
            rows.append([label, procs, "error: " + r["error"]] + [""] * 13)
            continue
        rate = r["windows_per_s"]
        workers = r["worker_peak_rss_mb"]
        cpu = r["main_cpu_percent"]
        per_cpu = rate / (cpu / 100) if procs == 1 and cpu > 0 else None  # robust to a busy neighbour
        whole = r.get("whole_windows_per_s")
        rows.append([label, procs, rate, whole if whole else "-",
                     f"{r['whole_cores_busy']:.2f}" if whole and procs == 1 else "-",
                     r["whole_windows_per_cpu_s"] if whole and procs == 1 else "-",
                     r["measured_over"], f"{cpu:.0f}", per_cpu if per_cpu else "-",
                     f"{r['first_batch_s']:.3f}", later_first(r), r["main_peak_rss_mb"],
                     f"{max(workers)} (max of {len(workers)})" if workers else "-",
                     f"{rate / wds_rate:.2f}x" if wds_rate else "",
                     f"{100 * rate / copy_rate:.0f}%" if copy_rate else "", f"{r['others_load']:.2f}"])
    text += "\n\n### Read side: windows of 1.92 s every 0.1 s, batch 64, float32, spectrogram + speech mask + label\n\n"
    text += markdown_table(["reader", "procs", "steady windows / s", "whole epoch windows / s",
                            "cores busy, whole epoch", "windows / CPU-s, whole epoch", "measured over",
                            "steady main CPU %", "steady windows / CPU-s (1 proc)", "1st batch s",
                            "later epochs' 1st batch s (median)",
                            "peak RSS main MB", "peak RSS workers MB",
                            "vs (a) wds 1 proc", "of (d) copy 1 thread", "others' load"], rows)
    text += values_check_line(results.get("checks", {}).get("values_check"), read.get("spg_1proc"))
    text += map_style_line(read.get("spg_map_style"), read.get("spg_map_style_batches"), read.get("spg_1proc"))
    cfg = results["config"]
    text += (f"\n\nCorpus {cfg['hours']:g} h, {cfg['files']} files, {cfg['epoch_windows']} windows per epoch, "
             f"{cfg['shards']} shards. `import torch` alone: peak RSS {results['import_torch_rss_mb']} MB; "
             f"bench.py imports (torch, webdataset, spgdataset): {results['imports_rss_mb']} MB. "
             f"Load average before/after: {cfg['loadavg_before']} / {cfg['loadavg_after']}.")
    return text


def later_first(row: Dict[str, Any]) -> str:
    """The median first batch of the epochs after the first (what a set_epoch or a validation pass waits for)."""
    later = row.get("later_first_batch_s")
    return f"{sorted(later)[len(later) // 2]:.3f}" if later else "-"


def values_check_line(check: Optional[Dict[str, Any]], spg: Optional[Dict[str, Any]]) -> str:
    """The stored-values check per file and as a share of a spg_1proc epoch (which pays it in its first epoch
    only, from local disk)."""
    if not check or "error" in check:
        return "" if not check else f"\n\nStored-values check: error: {check['error']}"
    epoch_s = spg["epoch_windows"] / spg["windows_per_s"] if spg and spg.get("windows_per_s") else None
    share = f", {100 * check['check_s'] / epoch_s:.1f}% of a spg_1proc epoch ({epoch_s:.2f} s)" if epoch_s else ""
    return (f"\n\nStored-values check (NaN, infinities, beyond the storage range; a local shard set's first epoch, "
            f"every epoch from S3): {check['us_per_file']:.1f} us per file, {1000 * check['check_s']:.1f} ms per pass "
            f"over the {check['files']} files ({check['mb_per_s']:,.0f} MB/s){share}.")


def map_style_line(access: Optional[Dict[str, Any]], batches: Optional[Dict[str, Any]],
                   spg: Optional[Dict[str, Any]]) -> str:
    """Random access against streaming (the target: at least a third of spg_1proc), and a file's first access."""
    if not access or "error" in access:
        return ""
    streaming = spg.get("windows_per_s") if spg else None

    def rate(row: Dict[str, Any], name: str) -> str:
        share = f" = {row['windows_per_s'] / streaming:.2f} of spg_1proc" if streaming else ""
        return (f"`{name}` {row['windows_per_s']:,.0f} windows/s{share} (epochs: "
                f"{' / '.join(f'{r:,}' for r in row['epoch_rates'])})")

    both = rate(access, "spg_map_style")
    if batches and "error" not in batches:
        both += "; " + rate(batches, "spg_map_style_batches")
    return (f"\n\nRandom access: {both}; the first epoch reads every file once. First access of a file: "
            f"{access['first_access_ms_median']:.2f} ms median, {access['first_access_ms_p90']:.2f} ms p90, "
            f"{access['first_access_ms_max']:.2f} ms max over {access['first_access_files']} files (shards in the page "
            "cache, nothing decoded yet).")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=1.0, help="demo corpus size (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.1 h corpus, few windows")
    parser.add_argument("--out", default="bench_out", help="working folder; corpus and npz files are cached here")
    parser.add_argument("--shards", type=int, default=8, help="shard count (equal file counts; default 8)")
    parser.add_argument("--epochs", type=int, default=3, help="full epochs for the full-epoch readers (median)")
    parser.add_argument("--write-repeats", type=int, default=3, help="runs per write job, median kept (default 3)")
    parser.add_argument("--only", help="comma-separated job names to run (reuses existing shards)")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: run one job in this process
    parser.add_argument("--profile", action="store_true", help="with --job: cProfile it, print the top 25 by tottime")
    args = parser.parse_args()
    if args.quick and args.hours == parser.get_default("hours"):
        args.hours = 0.1

    if args.job:
        result = profile_job(args.job, args) if args.profile else run_in_this_process(args.job, args)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return

    os.makedirs(args.out, exist_ok=True)
    selected = set(args.only.split(",")) if args.only else set(WRITE_JOBS) | set(READ_JOBS) | set(CHECK_JOBS)
    unknown = selected - set(WRITE_JOBS) - set(READ_JOBS) - set(CHECK_JOBS)
    if unknown:
        known = sorted(WRITE_JOBS) + sorted(READ_JOBS) + sorted(CHECK_JOBS)
        parser.error(f"unknown jobs {sorted(unknown)}; known: {known}")
    loadavg_before = os.getloadavg()
    ensure_corpus(args)
    write = {name: median_run(name, args) for name in WRITE_JOBS if name in selected}
    w1, w2 = write.get("write_w1", {}), write.get("write_w2", {})
    if "sha256" in w1 and "sha256" in w2:
        same = w1["sha256"] == w2["sha256"]
        log(f"shards of workers=1 and workers=2 are {'identical' if same else 'DIFFERENT'}")
        w2["identical_to_workers_1"] = same
    if not os.path.exists(os.path.join(paths(args)["shards"], "manifest.json")):
        write["write_w1"] = run_job("write_w1", args)
    if {"npz_1proc", "npz_2workers"} & selected:
        ensure_npz(args)
    settle()
    read = {name: run_job(name, args) for name in READ_JOBS if name in selected}
    checks = {name: run_job(name, args) for name in CHECK_JOBS if name in selected}

    manifest = read_manifest(paths(args)["shards"])
    probe = SpectrogramDataset(paths(args)["shards"], window_size_sec=WINDOW_SEC, window_offset_sec=STEP_SEC,
                               window_content_ratio=0)
    results = {
        "config": {"hours": args.hours, "quick": args.quick, "out": args.out, "files": manifest["totals"]["files"],
                   "shards": manifest["totals"]["shards"], "epoch_windows": probe.num_windows(), "batch": BATCH,
                   "window_frames": W, "step_frames": S, "limits": limits(args), "cpus": os.cpu_count(),
                   "python": platform.python_version(), "torch": torch.__version__, "webdataset": wds.__version__,
                   "spgdataset": spgdataset.__version__, "loadavg_before": [round(x, 2) for x in loadavg_before],
                   "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "import_torch_rss_mb": import_torch_rss_mb(),
        "imports_rss_mb": run_job("baseline", args).get("main_peak_rss_mb"),
        "write": write,
        "read": read,
        "checks": checks,
    }
    text = report(results)
    results["table_markdown"] = text
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(text)
    log(f"wrote {os.path.join(args.out, 'results.json')}")


if __name__ == "__main__":
    main()
