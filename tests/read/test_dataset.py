"""SpectrogramDataset checked against brute force over the stored shards.

Every expectation here is computed independently of the package: window starts and content ratios by
looping over frames, masks by testing each frame centre against each interval, window contents by
reading the shard tars with tarfile + numpy.load + soundfile. The corpus is the demo corpus (16 and
22.05 kHz files) plus a few hand-made files for the edge cases: a file shorter than one window, a file
without intervals (and without a speaker), a file annotated only with noise, and a file whose interval
edges fall exactly on frame centres.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import msgpack
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from spgdataset import ShardError, SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus

SR, HOP, N_MELS = 16000, 160, 80
W, S = 192, 10  # 1.92 s and 0.1 s at 16 kHz with hop 160
LOG_EPS = math.log(1e-6)
SHORT, PLAIN, NOISE_ONLY, ALIGNED = "extra/short.wav", "extra/plain.wav", "extra/noise_only.wav", "extra/aligned.wav"
NO_MASKS = {"spectrogram": False, "masks": []}


def light(source, **kwargs) -> SpectrogramDataset:
    """Only key/start (and label/valid when asked): fast to iterate. Content stays "speech", since the
    default content is the masks requested, and with no masks every annotated file would have none."""
    kwargs.setdefault("content_intervals", ["speech"])
    kwargs.setdefault("output_configuration", NO_MASKS)
    return SpectrogramDataset(source, **kwargs)


# path: (rate, samples, intervals or None, metadata)
EXTRA_FILES = {
    SHORT: (16000, 16000, {"speech": [[0, 16000]]}, {"speaker": "spk01", "gender": "f"}),  # 101 frames < W
    PLAIN: (16000, 64000, None, {"gender": "x"}),  # no intervals, no speaker
    NOISE_ONLY: (22050, 88200, {"noise": [[2205, 60000]]}, {"speaker": "spk02", "gender": "m"}),
    # speech edges on frame centres 10 (in) and 200 (out); [48000, 48001) holds frame 300 only;
    # noise [48161, 48319] holds no frame centre at all (frames 301, 302 are at 48160, 48320).
    ALIGNED: (16000, 80000, {"speech": [[1600, 32000], [48000, 48001]], "noise": [[48161, 48319]]},
              {"speaker": "spk03", "gender": "f"}),
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Tuple[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    meta_path = make_corpus(root, total_seconds=180, seed=3, rates=(16000, 22050), min_seconds=2.5, max_seconds=12)
    with open(meta_path) as f:
        metadata = json.load(f)
    rng = np.random.default_rng(1)
    for path, (rate, samples, intervals, meta) in EXTRA_FILES.items():
        os.makedirs(root / os.path.dirname(path), exist_ok=True)
        sf.write(root / path, (0.1 * rng.standard_normal(samples)).astype(np.float32), rate, subtype="PCM_16")
        entry: Dict[str, Any] = {"length": samples, "metadata": meta}
        if intervals is not None:
            entry["intervals"] = intervals
        metadata[path] = entry
    with open(meta_path, "w") as f:
        json.dump(metadata, f)
    return str(root), meta_path


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("shards")
    result = write_shards(corpus[0], corpus[1], out, max_shard_files=4, with_audio=True, workers=1, progress=False)
    assert result.manifest is not None and len(result.manifest["shards"]) >= 6
    return str(out)


@pytest.fixture(scope="module")
def shards_recut(corpus, tmp_path_factory) -> str:
    """The same corpus cut into other shards (7 files each), without audio."""
    out = tmp_path_factory.mktemp("shards_recut")
    write_shards(corpus[0], corpus[1], out, max_shard_files=7, with_audio=False, workers=1, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def manifest(shards) -> Dict[str, Any]:
    with open(os.path.join(shards, "manifest.json")) as f:
        return json.load(f)


class Stored:
    def __init__(self, shard: str, key: str, spec: np.ndarray, info: Dict[str, Any], audio: np.ndarray) -> None:
        self.shard, self.key, self.spec, self.info, self.audio = shard, key, spec, info, audio
        self.path, self.frames, self.intervals = info["path"], info["frames"], info["intervals"]
        self.metadata = info["metadata"]


def read_shard_dir(folder: str) -> Dict[str, Stored]:
    """Every sample of every shard, read with tarfile/numpy/msgpack/soundfile (in shard, then tar order)."""
    with open(os.path.join(folder, "manifest.json")) as f:
        names = [s["name"] for s in json.load(f)["shards"]]
    out: Dict[str, Stored] = {}
    for name in names:
        members: Dict[str, Dict[str, bytes]] = collections.OrderedDict()
        with tarfile.open(os.path.join(folder, name)) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()
        for key, m in members.items():
            spec = np.load(io.BytesIO(m["spec.npy"]), allow_pickle=False)
            info = msgpack.unpackb(m["info.msgpack"], raw=False)
            audio = sf.read(io.BytesIO(m["audio.flac"]), dtype="float32")[0] if "audio.flac" in m else None
            out[key] = Stored(name, key, spec, info, audio)
    return out


@pytest.fixture(scope="module")
def stored(shards) -> Dict[str, Stored]:
    files = read_shard_dir(shards)
    assert {f.path for f in files.values()} >= set(EXTRA_FILES)
    return files


@pytest.fixture(scope="module")
def key_of(stored) -> Dict[str, str]:
    return {f.path: f.key for f in stored.values()}


# ---------------------------------------------------------------- brute force


def brute_mask(spans, frames: int) -> np.ndarray:
    """Frame t is in [a, b) iff a <= t * hop < b: tested frame by frame, interval by interval."""
    return np.array([any(a <= t * HOP < b for a, b in spans) for t in range(frames)], dtype=bool)


def brute_starts(f: Stored, names, ratio: float, pad_short: bool = False) -> List[int]:
    if f.frames >= W:
        starts = list(range(0, f.frames - W + 1, S))
    else:
        starts = [0] if pad_short else []
    if not f.intervals or not names:  # unannotated file, or no content chosen: no filter
        return starts
    content = brute_mask([span for n in names for span in f.intervals.get(n, [])], f.frames)
    return [s for s in starts if int(content[s : s + W].sum()) >= ratio * W]


def brute_windows(files, names=("speech",), ratio: float = 0.5, pad_short: bool = False) -> collections.Counter:
    return collections.Counter((f.key, s) for f in files for s in brute_starts(f, names, ratio, pad_short))


def pairs(item: Dict[str, Any]) -> List[Tuple[str, int]]:
    """(key, start) of a batch or of a single window."""
    if isinstance(item["key"], list):
        assert item["start"].shape == (len(item["key"]),)
        return list(zip(item["key"], item["start"].tolist()))
    assert isinstance(item["key"], str) and item["start"].ndim == 0
    return [(item["key"], int(item["start"]))]


def collect(items) -> List[Tuple[str, int]]:
    return [p for item in items for p in pairs(item)]


def windows_of(ds: SpectrogramDataset) -> collections.Counter:
    return collections.Counter(ds.windows())


def rows(item: Dict[str, Any]):
    """Per-window views of a batch (or the window itself)."""
    if not isinstance(item["key"], list):
        yield item
        return
    for i in range(len(item["key"])):
        yield {name: ({k: v[i] for k, v in value.items()} if isinstance(value, dict) else value[i])
               for name, value in item.items()}


# ---------------------------------------------------------------- one epoch, all windows, once


def test_window_geometry_and_len(shards, stored):
    ds = SpectrogramDataset(shards)
    assert (ds.window, ds.step) == (W, S)
    expected = brute_windows(stored.values())
    assert windows_of(ds) == expected
    assert len(ds) == ds.num_windows() == sum(expected.values())
    assert max(expected.values()) == 1


def test_plain_iteration_yields_every_window_once(shards):
    ds = SpectrogramDataset(shards)
    items = list(ds)
    got = collect(items)
    assert collections.Counter(got) == windows_of(ds)
    assert len(got) == len(set(got)) == len(ds)
    paths = {f.key: f.path for f in read_shard_dir(shards).values()}
    for item in items:
        assert set(item) == {"spectrogram", "masks", "key", "path", "start"}
        assert item["path"] == paths[item["key"]]  # the file's path as metadata.json names it
        assert item["spectrogram"].shape == (N_MELS, W) and item["spectrogram"].dtype == torch.float32
        assert item["masks"]["speech"].shape == (W,) and item["masks"]["speech"].dtype == torch.bool


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_loader_epoch_matches_index(shards, num_workers):
    ds = SpectrogramDataset(shards, seed=4)
    loader = ds.loader(batch_size=16, num_workers=num_workers)
    batches = list(loader)
    assert len(batches) == len(loader) == len(ds)
    assert all(1 <= len(b["key"]) <= 16 and b["spectrogram"].shape[0] == len(b["key"]) for b in batches)
    got = collect(batches)
    assert collections.Counter(got) == windows_of(ds)
    assert len(got) == len(set(got))

    # per-window items through a DataLoader with real worker processes
    single = SpectrogramDataset(shards, seed=4, num_workers=num_workers)
    plain = DataLoader(single, batch_size=None, num_workers=num_workers)
    got = collect(plain)
    assert len(got) == len(plain) == len(single) == len(set(got))
    assert collections.Counter(got) == windows_of(single)


# ---------------------------------------------------------------- window contents


def expected_audio(f: Stored, start: int) -> np.ndarray:
    out = np.zeros(W * HOP, dtype=np.float32)
    piece = f.audio[start * HOP : (start + W) * HOP]
    out[: len(piece)] = piece
    return out


@pytest.mark.parametrize("shuffle_buffer", [10000, 37])  # one chunk, or many chunks with batches across them
def test_contents_equal_stored_slices(shards, stored, shuffle_buffer):
    ds = SpectrogramDataset(shards, window_content_ratio=0, normalize=False, dtype=torch.float32,
                            shuffle_buffer=shuffle_buffer,
                            output_configuration={"audio": True, "masks": ["speech", "noise"]})
    masks = {(f.key, name): brute_mask(f.intervals.get(name, []), f.frames)
             for f in stored.values() for name in ("speech", "noise")}
    seen, padded_audio, mixed_masks = 0, 0, 0
    for item in ds:
        f, start = stored[item["key"]], int(item["start"])
        assert f.spec.dtype == np.float16 and f.spec.flags.c_contiguous
        assert item["spectrogram"].dtype == torch.float32
        np.testing.assert_array_equal(item["spectrogram"].numpy(), f.spec[:, start : start + W].astype(np.float32))
        assert item["audio"].shape == (W * HOP,)
        np.testing.assert_array_equal(item["audio"].numpy(), expected_audio(f, start))
        padded_audio += (start + W) * HOP > len(f.audio)
        for name in ("speech", "noise"):
            mask = item["masks"][name].numpy()
            np.testing.assert_array_equal(mask, masks[f.key, name][start : start + W],
                                          err_msg=f"{f.path} {name} {start}")
            mixed_masks += 0 < mask.sum() < W
        seen += 1
    assert seen == sum(len(brute_starts(f, (), 0)) for f in stored.values())
    assert padded_audio > 0 and mixed_masks > 0  # the zero padding and the mask edges were exercised


@pytest.mark.slow
def test_contents_in_worker_batches(shards, stored):
    ds = SpectrogramDataset(shards, window_content_ratio=0, normalize=False, shuffle_buffer=50,
                            output_configuration={"audio": True, "masks": ["speech"]})
    count = 0
    for batch in ds.loader(batch_size=24, num_workers=2):
        assert batch["spectrogram"].shape[1:] == (N_MELS, W) and batch["audio"].shape[1:] == (W * HOP,)
        for item in rows(batch):
            f, start = stored[item["key"]], int(item["start"])
            np.testing.assert_array_equal(item["spectrogram"].numpy(), f.spec[:, start : start + W].astype(np.float32))
            np.testing.assert_array_equal(item["audio"].numpy(), expected_audio(f, start))
            np.testing.assert_array_equal(item["masks"]["speech"].numpy(),
                                          brute_mask(f.intervals.get("speech", []), f.frames)[start : start + W])
            count += 1
    assert count == len(windows_of(ds))


def test_normalize_global_and_window(shards, stored, manifest):
    mean = np.asarray(manifest["stats"]["mean"], dtype=np.float32)
    std = np.maximum(np.asarray(manifest["stats"]["std"], dtype=np.float32), np.float32(1e-5))
    assert mean.shape == std.shape == (N_MELS,)
    ds = SpectrogramDataset(shards, normalize=True)
    n = 0
    for item in ds:
        f, start = stored[item["key"]], int(item["start"])
        want = (f.spec[:, start : start + W].astype(np.float32) - mean[:, None]) / std[:, None]
        # the reader may hold normalised float16-stored frames in float16 (chunks.py): allow that rounding
        np.testing.assert_allclose(item["spectrogram"].numpy(), want, rtol=6e-4, atol=1e-6)
        n += 1
    assert n == len(ds)
    # global stats really are the per-bin mean/std over every stored frame
    allframes = np.concatenate([f.spec.astype(np.float64) for f in stored.values()], axis=1)
    np.testing.assert_allclose(mean, allframes.mean(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(manifest["stats"]["std"], allframes.std(axis=1), rtol=1e-4, atol=1e-4)

    per_window = SpectrogramDataset(shards, normalize="window", dtype=torch.float16)
    for item in list(per_window)[:50]:
        x = item["spectrogram"]
        assert x.dtype == torch.float16
        assert abs(float(x.float().mean())) < 1e-2 and abs(float(x.float().std()) - 1) < 1e-2


def test_float16_output_without_normalisation_is_exact(shards, stored):
    ds = SpectrogramDataset(shards, normalize=False, dtype=torch.float16)
    for item in list(ds)[:100]:
        f, start = stored[item["key"]], int(item["start"])
        assert item["spectrogram"].dtype == torch.float16
        np.testing.assert_array_equal(item["spectrogram"].numpy(), f.spec[:, start : start + W])


def test_mask_rule_at_frame_centres(shards, key_of):
    """ALIGNED has interval edges exactly on frame centres: start is in, stop is out."""
    ds = SpectrogramDataset(shards, window_content_ratio=0, shuffle=False, normalize=False,
                            output_configuration={"masks": ["speech", "noise"], "spectrogram": False})
    key = key_of[ALIGNED]
    frames = 1 + 80000 // HOP
    speech = np.zeros(frames, dtype=bool)
    speech[10:200] = True  # [1600, 32000): frames 10..199
    speech[300] = True  # [48000, 48001): frame 300
    seen = 0
    for item in ds:
        if item["key"] != key:
            continue
        start = int(item["start"])
        np.testing.assert_array_equal(item["masks"]["speech"].numpy(), speech[start : start + W])
        assert not item["masks"]["noise"].any()  # [48161, 48319] holds no frame centre
        seen += 1
    assert seen == len(range(0, frames - W + 1, S))


# ---------------------------------------------------------------- content ratio


@pytest.mark.parametrize("ratio", [0, 0.5, 1.0])
@pytest.mark.parametrize("masks,content", [(["speech"], None), (["noise"], None), (["speech"], ["speech", "noise"]),
                                           ([], None), ([], ["noise"])])
def test_content_ratio_matches_brute_force(shards, stored, key_of, ratio, masks, content):
    ds = SpectrogramDataset(shards, window_content_ratio=ratio, content_intervals=content,
                            output_configuration={"spectrogram": False, "masks": masks}, batch_size=64)
    names = content if content is not None else masks
    expected = brute_windows(stored.values(), names, ratio)
    assert windows_of(ds) == expected
    got = collect(ds)
    assert collections.Counter(got) == expected and len(ds) == math.ceil(len(got) / 64)
    # files without intervals keep every window, whatever the ratio
    plain = stored[key_of[PLAIN]]
    assert sum(1 for k, _ in got if k == plain.key) == len(range(0, plain.frames - W + 1, S))
    # a file annotated only with noise has no speech content
    noise_only = key_of[NOISE_ONLY]
    if ratio > 0 and names and "noise" not in names:
        assert not any(k == noise_only for k, _ in got)
    if ratio == 0:
        assert sum(expected.values()) == sum(len(brute_starts(f, (), 0)) for f in stored.values())


def test_content_ratio_filters_something(shards, stored):
    """The ratios are not vacuous on this corpus: 0 > 0.5 > 1.0 > 0 windows."""
    counts = [sum(brute_windows(stored.values(), ("speech",), r).values()) for r in (0, 0.5, 1.0)]
    assert counts[0] > counts[1] > counts[2] > 0


# ---------------------------------------------------------------- labels and meta


@pytest.mark.parametrize("label_key", ["speaker", "gender"])
def test_labels_follow_manifest_vocabulary(shards, stored, corpus, manifest, key_of, label_key):
    with open(corpus[1]) as f:
        metadata = json.load(f)
    values = sorted({entry["metadata"][label_key] for entry in metadata.values() if label_key in entry["metadata"]})
    assert manifest["labels"][label_key] == values
    ds = SpectrogramDataset(shards, window_content_ratio=0, batch_size=32,
                            output_configuration={"spectrogram": False, "masks": [], "label": label_key,
                                                  "meta": ["speaker", "gender"]})
    assert ds.label_vocabulary == values
    n, missing = 0, 0
    for batch in ds:
        assert batch["label"].dtype == torch.int64
        for item in rows(batch):
            raw = metadata[stored[item["key"]].path]["metadata"]
            assert item["meta"] == {"speaker": raw.get("speaker"), "gender": raw.get("gender")}
            want = values.index(raw[label_key]) if label_key in raw else -1
            assert int(item["label"]) == want
            missing += want == -1
            n += 1
    assert n == len(windows_of(ds))
    assert (missing > 0) == (label_key == "speaker")  # PLAIN has no speaker


# ---------------------------------------------------------------- splits


SPLIT = (0.8, 0.1, 0.1)


def split_paths(folder: str, stored_files: Dict[str, Stored], **kwargs) -> List[collections.Counter]:
    """Per subset: multiset of (path, start), from the index and from iteration (checked equal)."""
    out = []
    for subset in range(3):
        ds = light(folder, split=SPLIT, subset=subset, window_content_ratio=0, batch_size=128, **kwargs)
        got = collections.Counter(collect(ds))
        assert got == windows_of(ds)
        assert len(ds) == math.ceil(sum(got.values()) / 128)
        out.append(collections.Counter((stored_files[k].path, s) for (k, s), c in got.items() for _ in range(c)))
    return out


def test_splits_disjoint_complete_and_stable_under_recut(shards, shards_recut, stored):
    subsets = split_paths(shards, stored)
    full = collections.Counter((stored[k].path, s) for k, s in light(shards, window_content_ratio=0).windows())
    assert sum(subsets, collections.Counter()) == full
    files = [{p for p, _ in c} for c in subsets]
    assert all(files) and not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    assert len(files[0]) > len(files[1]) and len(files[0]) > len(files[2])

    recut_stored = read_shard_dir(shards_recut)
    assert len({f.shard for f in recut_stored.values()}) < len({f.shard for f in stored.values()})
    assert split_paths(shards_recut, recut_stored) == subsets


def test_split_by_speaker_keeps_each_speaker_in_one_subset(shards, stored):
    subsets = split_paths(shards, stored, split_key="speaker")
    speaker_of = {f.path: f.metadata.get("speaker") for f in stored.values()}
    where = collections.defaultdict(set)
    for i, c in enumerate(subsets):
        for path, _ in c:
            if speaker_of[path] is not None:
                where[speaker_of[path]].add(i)
    assert set(where) == {v for v in speaker_of.values() if v is not None}
    assert all(len(s) == 1 for s in where.values()), dict(where)
    assert len({next(iter(s)) for s in where.values()}) > 1  # not all in one subset on this corpus
    full = collections.Counter((stored[k].path, s) for k, s in light(shards, window_content_ratio=0).windows())
    assert sum(subsets, collections.Counter()) == full


# ---------------------------------------------------------------- shuffling and epochs


def epoch_order(ds: SpectrogramDataset, epoch: int) -> List[Tuple[str, int]]:
    ds.set_epoch(epoch)
    return collect(ds)


def test_epochs_reshuffle_and_seed_reproduces(shards):
    make = lambda seed: light(shards, seed=seed)
    ds = make(7)
    e0, e1 = epoch_order(ds, 0), epoch_order(ds, 1)
    assert e0 != e1 and collections.Counter(e0) == collections.Counter(e1) == windows_of(ds)
    assert epoch_order(ds, 0) == e0
    again = make(7)
    assert epoch_order(again, 1) == e1 and epoch_order(again, 0) == e0
    assert epoch_order(make(8), 0) != e0


@pytest.mark.slow
def test_epochs_with_two_persistent_workers(shards):
    def run(seed: int) -> List[List[Tuple[str, int]]]:
        ds = light(shards, seed=seed)
        loader = ds.loader(batch_size=16, num_workers=2)
        orders = []
        for epoch in (0, 1):
            ds.set_epoch(epoch)  # after the workers exist: they must see it
            orders.append(collect(loader))
        return orders

    first, second = run(3), run(3)
    assert first == second
    assert first[0] != first[1]
    assert collections.Counter(first[0]) == collections.Counter(first[1])
    assert len(first[0]) == len(set(first[0]))


def test_no_shuffle_is_fixed_and_in_index_order(shards):
    ds = light(shards, shuffle=False)
    a = epoch_order(ds, 0)
    b = epoch_order(ds, 5)
    assert a == b == ds.windows()
    assert len(a) == len(set(a))
    loader_order = collect(light(shards, shuffle=False).loader(batch_size=10, num_workers=0))
    assert loader_order == a


def test_epoch_reshuffles_windows_of_the_same_files(shards):
    """One shard, no file shuffle (file_buffer=1): only the window shuffle can change the order."""
    ds = light(os.path.join(shards, "shard-000003.tar"), file_buffer=1)
    e0, e1 = epoch_order(ds, 0), epoch_order(ds, 1)
    assert len(e0) > 20 and e0 != e1 and sorted(e0) == sorted(e1)


def test_file_order_is_shuffled(shards):
    """One shard, one file per window chunk (shuffle_buffer=1): the file order comes from the file shuffle."""
    ds = light(os.path.join(shards, "shard-000003.tar"), shuffle_buffer=1, window_content_ratio=0)
    orders = {tuple(dict.fromkeys(k for k, _ in epoch_order(ds, epoch))) for epoch in range(6)}
    assert len(orders) > 1
    files = {k for k, _ in ds.windows()}
    assert len(files) >= 3 and all(len(o) == len(files) for o in orders)


def test_ranks_get_equal_disjoint_shares_that_change_per_epoch(shards):
    total = windows_of(light(shards))
    n = sum(total.values())
    shares = {}
    for epoch in (0, 1):
        got = []
        for rank in (0, 1):
            ds = light(shards, rank=rank, world_size=2)
            assert len(ds) == n // 2
            got.append(collections.Counter(epoch_order(ds, epoch)))
            assert sum(got[-1].values()) == n // 2 and max(got[-1].values()) == 1
        assert not (got[0] & got[1])
        union = got[0] + got[1]
        assert union & total == union and sum((total - union).values()) == n % 2
        shares[epoch] = got[0]
    assert shares[0] != shares[1]  # shards are reshuffled before they are split between ranks


# ---------------------------------------------------------------- memory cache


def test_memory_cache_serves_later_epochs(shards, stored):
    shards_with_windows = len({stored[k].shard for k, _ in SpectrogramDataset(shards).windows()})
    # every shard once per epoch, and the one of the first chunk once more: its files are read alone first
    once = (shards_with_windows, shards_with_windows + 1)
    cached = light(shards, max_memory_cache=1 << 30)
    e0 = epoch_order(cached, 0)
    assert cached.shard_opens in once
    opened = cached.shard_opens
    e1 = epoch_order(cached, 1)
    assert cached.shard_opens == opened  # nothing reopened
    assert collections.Counter(e0) == collections.Counter(e1) == windows_of(cached) and e0 != e1

    uncached = light(shards, max_memory_cache=0)
    epoch_order(uncached, 0)
    assert uncached.shard_opens in once
    opened = uncached.shard_opens
    assert collections.Counter(epoch_order(uncached, 1)) == windows_of(uncached)
    # every shard again, but the last one read, which the reader still holds (decode.py: last_shard)
    assert uncached.shard_opens - opened in (shards_with_windows - 1, *once)


def test_memory_cache_contents_are_right_in_later_epochs(shards, stored):
    ds = SpectrogramDataset(shards, max_memory_cache=1 << 30, normalize=False,
                            output_configuration={"audio": True, "masks": ["speech"]})
    epoch_order(ds, 0)
    ds.set_epoch(1)
    opens = ds.shard_opens
    for item in list(ds)[:200]:
        f, start = stored[item["key"]], int(item["start"])
        np.testing.assert_array_equal(item["spectrogram"].numpy(), f.spec[:, start : start + W].astype(np.float32))
        np.testing.assert_array_equal(item["audio"].numpy(), expected_audio(f, start))
    assert ds.shard_opens == opens


# ---------------------------------------------------------------- broken shards


BROKEN = "shard-000001.tar"


def member_offsets(path: str) -> List[Tuple[str, int, int]]:
    """(name, header offset, data offset) of each member."""
    with tarfile.open(path) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


def cut_point(path: str, how: str) -> int:
    members = member_offsets(path)
    size = os.path.getsize(path)
    if how == "half":
        return size // 2
    if how == "between_files":  # 512-byte boundary: header of the third file's first member
        keys = list(dict.fromkeys(name.split(".")[0] for name, _, _ in members))
        return next(off for name, off, _ in members if name.startswith(keys[2] + "."))
    if how == "between_members":  # 512-byte boundary inside one file: before its info member
        return next(off for name, off, _ in members if name.endswith(".info.msgpack"))
    if how == "inside_data":  # 512-byte boundary inside a member's data
        name, off, data = next(m for m in members if m[0].endswith(".spec.npy") and m is not members[0])
        return data + 512
    if how == "end_padding":  # all members intact, the end-of-archive blocks gone
        name, off, data = members[-1]
        with tarfile.open(path) as tar:
            last = tar.getmember(name).size
        return data + -(-last // 512) * 512
    raise AssertionError(how)


@pytest.fixture
def broken_copy(shards, tmp_path):
    def make(how: str) -> str:
        folder = tmp_path / how
        shutil.copytree(shards, folder)
        path = folder / BROKEN
        cut = cut_point(str(path), how)
        assert 0 < cut < os.path.getsize(path) and (how == "half" or cut % 512 == 0)
        with open(path, "r+b") as f:
            f.truncate(cut)
        return str(folder)
    return make


@pytest.mark.parametrize("how", ["half", "between_files", "between_members", "inside_data", "end_padding"])
def test_truncated_shard(shards, stored, broken_copy, how):
    folder = broken_copy(how)
    ds = light(folder, window_content_ratio=0, batch_size=64)
    with pytest.raises(ShardError, match=BROKEN):
        for _ in ds:
            pass
    if how != "end_padding":  # without the sha256 check, the tar reader and the file count still notice
        with pytest.raises(ShardError, match=BROKEN):
            for _ in light(folder, window_content_ratio=0, batch_size=64, verify=False):
                pass

    warn = light(folder, window_content_ratio=0, batch_size=64, on_error="warn")
    got = collections.Counter(collect(warn))
    everything = windows_of(warn)
    others = collections.Counter({(k, s): c for (k, s), c in everything.items() if stored[k].shard != BROKEN})
    lost = sum(everything.values()) - sum(others.values())
    assert set(got) == set(others)  # every window of the intact shards, none of the broken one, none made up
    assert sum(got.values()) == sum(everything.values())  # the broken shard's share made up by repeats
    assert sum((got - others).values()) == lost == warn.filled_windows > 0
    assert len(warn.errors) == 1 and BROKEN in warn.errors[0] and warn.skipped_shards == 1


def alter_spec_bytes(folder: str, name: str = BROKEN) -> None:
    path = os.path.join(folder, name)
    size = os.path.getsize(path)
    name, off, data = next(m for m in member_offsets(path) if m[0].endswith(".spec.npy"))
    with open(path, "r+b") as f:
        f.seek(data + 300)
        original = f.read(16)
        f.seek(data + 300)
        f.write(bytes(b ^ 0x5A for b in original))
    assert os.path.getsize(path) == size


def test_altered_shard_is_a_sha256_mismatch(shards, tmp_path):
    folder = str(tmp_path / "altered")
    shutil.copytree(shards, folder)
    alter_spec_bytes(folder)
    ds = light(folder, window_content_ratio=0, batch_size=64)
    with pytest.raises(ShardError, match=rf"{BROKEN}.*(sha256|blake2b)"):
        for _ in ds:
            pass
    unverified = light(folder, window_content_ratio=0, batch_size=64, verify=False)
    assert collections.Counter(collect(unverified)) == windows_of(unverified)


def test_altered_shard_is_skipped_in_warn_mode(shards, stored, tmp_path):
    """on_error='warn' logs 'skipping: <shard> sha256 ...': none of that shard's windows may reach training,
    in this epoch or (with the memory cache) in later ones."""
    folder = str(tmp_path / "altered")
    shutil.copytree(shards, folder)
    alter_spec_bytes(folder)
    ds = light(folder, window_content_ratio=0, batch_size=64, on_error="warn", max_memory_cache=1 << 30)
    others = collections.Counter({(k, s): c for (k, s), c in windows_of(ds).items() if stored[k].shard != BROKEN})
    for epoch in (0, 1):
        got = collections.Counter(epoch_order(ds, epoch))
        assert any("sha256" in e and BROKEN in e for e in ds.errors)
        assert set(got) == set(others), f"epoch {epoch}: windows of the altered shard yielded"
        assert sum(got.values()) == ds.num_windows()  # made up by repeats of the others



class CountingSha256:
    """Counts the shards the dataset hashes (wraps hashlib.sha256 as dataset.py calls it)."""

    def __init__(self, monkeypatch) -> None:
        import hashlib

        from spgdataset.read import dataset as dataset_module

        self.calls = 0
        real = hashlib.sha256

        def counting(data=b""):
            self.calls += bytes(memoryview(data)[257:262]) == b"ustar"  # shards, not the index or digests
            return real(data)

        monkeypatch.setattr(dataset_module.hashlib, "sha256", counting)


def test_unchanged_local_shards_are_hashed_once_per_process(shards, tmp_path, monkeypatch):
    folder = str(tmp_path / "copy")
    shutil.copytree(shards, folder)
    hashes = CountingSha256(monkeypatch)
    count = len(light(folder).shards.shards)
    ds = light(folder, window_content_ratio=0, batch_size=64)
    # every shard once, but those whose files were all in the first chunk, read alone (each file checked
    # against its blake2b instead)
    def first_chunk_shards(epoch: int) -> int:
        order = ds.epoch_order(epoch)
        files = ds.selection.files[order.files[order.chunk_files[0] : order.chunk_files[1]]]
        return len(set(ds.shards.index.shard[files].tolist()))

    first = collections.Counter(epoch_order(ds, 0))
    hashed = hashes.calls
    assert count - first_chunk_shards(0) <= hashed <= count
    assert collections.Counter(epoch_order(ds, 1)) == first  # every window again, no shard hashed twice
    assert hashed <= hashes.calls <= count
    hashed = hashes.calls
    always = light(folder, window_content_ratio=0, batch_size=64, verify="always")
    epoch_order(always, 0), epoch_order(always, 1)
    assert 2 * count - first_chunk_shards(0) - first_chunk_shards(1) <= hashes.calls - hashed <= 2 * count


def test_the_first_chunk_is_read_file_by_file_each_checked_against_its_digest(tmp_path, monkeypatch):
    """The first batch waits for its own files, not for a whole shard to be read and hashed: each file of the
    first chunk is read by its byte range and checked against the index's blake2b; a changed byte in one of
    them is a ShardError naming the file, or, in warn mode, a skip made up like any other."""
    from spgdataset.demo import make_corpus

    metadata = make_corpus(tmp_path / "audio", 120, seed=4, min_seconds=2, max_seconds=4)
    folder = tmp_path / "copy"
    write_shards(tmp_path / "audio", metadata, folder, max_shard_files=20, workers=1, progress=False)
    hashes = CountingSha256(monkeypatch)
    ds = light(str(folder), window_content_ratio=0, batch_size=8)
    first = next(ds.iter_epoch(0))  # in the caller's thread: nothing read ahead
    assert hashes.calls == 0 and len(first["key"]) == 8
    order, index = ds.epoch_order(0), ds.shards.index
    position = int(ds.selection.files[order.files[0]])
    offset, size = int(index.members[0][position]), int(index.members[1][position])
    shard = ds.shards.manifest.shards[int(index.shard[position])]
    data = bytearray((folder / shard.name).read_bytes())
    data[offset + size - 1030] ^= 0xFF  # a byte of the file's stored values (its last member is 1024-padded)
    (folder / shard.name).write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{shard.name}: the bytes of '{index.keys[position]}' disagree"):
        next(light(str(folder), window_content_ratio=0, batch_size=8).iter_epoch(0))
    warn = light(str(folder), window_content_ratio=0, batch_size=8, on_error="warn")
    assert sum(len(b["key"]) for b in warn) == warn.num_windows() and warn.skipped_shards == 1


@pytest.mark.parametrize("change", ["in_place", "replaced"])
def test_a_shard_changed_after_its_check_is_checked_again(shards, tmp_path, change):
    """In place (mtime moves) or replaced by rename (new inode): the next epoch hashes it and refuses it."""
    folder = str(tmp_path / "copy")
    shutil.copytree(shards, folder)
    ds = light(folder, window_content_ratio=0, batch_size=64)
    epoch_order(ds, 0)
    path = os.path.join(folder, BROKEN)
    if change == "in_place":
        time.sleep(0.01)  # a distinct mtime even on coarse clocks
        alter_spec_bytes(folder)
    else:  # an altered copy renamed over it, given the old mtime: only the inode tells
        before = os.stat(path)
        shutil.copy(path, os.path.join(folder, "spare.tar"))
        alter_spec_bytes(folder, "spare.tar")
        os.utime(os.path.join(folder, "spare.tar"), ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(os.path.join(folder, "spare.tar"), path)
    with pytest.raises(ShardError, match=rf"{BROKEN}.*(sha256|blake2b)"):
        epoch_order(ds, 1)


def test_verify_always_catches_a_change_that_kept_size_and_mtime(shards, tmp_path):
    """The documented limit of the once-per-process check, and its way out."""
    folder = str(tmp_path / "copy")
    shutil.copytree(shards, folder)
    path = os.path.join(folder, BROKEN)
    ds = light(folder, window_content_ratio=0, batch_size=64)
    always = light(folder, window_content_ratio=0, batch_size=64, verify="always")
    epoch_order(ds, 0), epoch_order(always, 0)
    before = os.stat(path)
    alter_spec_bytes(folder)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    epoch_order(ds, 1)  # same inode, size and mtime: taken as checked
    with pytest.raises(ShardError, match=rf"{BROKEN}.*(sha256|blake2b)"):
        epoch_order(always, 1)
    with pytest.raises(ValueError, match="verify"):
        light(folder, verify="sometimes")


# ---------------------------------------------------------------- batches and short files


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_counts(shards, stored, num_workers):
    """Whatever the plan gives each worker: each worker's last batch may be short (drop_last=False) or is
    dropped (True); len() says how many batches come, every batch is full otherwise."""
    B = 24
    total = sum(brute_windows(stored.values()).values())
    workers = max(num_workers, 1)
    counts = {}
    for drop_last in (False, True):
        ds = light(shards, shuffle=False, drop_last=drop_last)
        loader = ds.loader(batch_size=B, num_workers=num_workers)
        batches = list(loader)
        sizes = [len(b["key"]) for b in batches]
        got = collect(batches)
        assert len(batches) == len(loader)
        assert len(got) == len(set(got)) and set(got) <= set(ds.windows())
        short = [n for n in sizes if n != B]
        if drop_last:
            assert not short
            assert 0 <= total - sum(sizes) < workers * B
        else:
            assert sum(sizes) == total and len(short) <= workers and all(0 < n < B for n in short)
        counts[drop_last] = (len(batches), short)
    if num_workers == 0:
        assert counts[False][0] == math.ceil(total / B) and counts[True][0] == total // B
    assert counts[False][0] - counts[True][0] == len(counts[False][1])


def test_pad_short_yields_one_padded_window(shards, stored, key_of):
    short = stored[key_of[SHORT]]
    assert short.frames == 101 < W
    plain = SpectrogramDataset(shards)
    assert not any(k == short.key for k, _ in plain.windows())

    ds = SpectrogramDataset(shards, pad_short=True, normalize=False,
                            output_configuration={"audio": True, "masks": ["speech"]})
    assert windows_of(ds) == brute_windows(stored.values(), ("speech",), 0.5, pad_short=True)
    assert windows_of(ds) - windows_of(plain) == collections.Counter({(short.key, 0): 1})
    items = [item for item in ds if item["key"] == short.key]
    assert len(items) == 1 and int(items[0]["start"]) == 0
    item = items[0]
    valid = np.zeros(W, dtype=bool)
    valid[:101] = True
    np.testing.assert_array_equal(item["masks"]["valid"].numpy(), valid)
    speech = np.zeros(W, dtype=bool)
    speech[:100] = True  # [0, 16000): frame 100 sits at sample 16000, outside
    np.testing.assert_array_equal(item["masks"]["speech"].numpy(), speech)
    np.testing.assert_array_equal(item["spectrogram"][:, :101].numpy(), short.spec.astype(np.float32))
    # padding is log(eps), the log-mel of silence (possibly rounded to float16 like the stored frames)
    np.testing.assert_allclose(item["spectrogram"][:, 101:].numpy(), LOG_EPS, rtol=5e-4)
    np.testing.assert_array_equal(item["audio"].numpy(), expected_audio(short, 0))
    assert not item["audio"][16000:].any()

    # every other window has an all-True valid mask
    for other in light(shards, pad_short=True, batch_size=64):
        others = [i for i, k in enumerate(other["key"]) if k != short.key]
        assert other["masks"]["valid"][others].all()

    # padding is not content: 100 speech frames of 192 pass 0.5 but not 1.0
    full = SpectrogramDataset(shards, pad_short=True, window_content_ratio=1.0)
    assert not any(k == short.key for k, _ in full.windows())


# ---------------------------------------------------------------- argument checks


def test_audio_from_shards_without_audio_is_a_clear_error(shards_recut):
    with pytest.raises(ValueError, match=r"audio.*(--with-audio|without)"):
        SpectrogramDataset(shards_recut, output_configuration={"audio": True})
    SpectrogramDataset(shards_recut)  # without audio it is fine


@pytest.mark.parametrize("arg,value", [("sample_rate", 22050), ("n_mels", 64), ("hop_length", 100), ("n_fft", 512)])
def test_feature_parameters_must_agree_with_shards(shards, arg, value):
    with pytest.raises(ValueError, match=rf"{arg}={value}"):
        SpectrogramDataset(shards, **{arg: value})


def test_agreeing_feature_parameters_are_accepted(shards):
    ds = SpectrogramDataset(shards, sample_rate=SR, n_mels=N_MELS, hop_length=HOP, n_fft=400)
    assert ds.sample_rate == SR and ds.n_mels == N_MELS


# ---------------------------------------------------------------- source forms


def test_source_forms(shards, stored):
    forms = [shards, Path(shards), os.path.join(shards, "manifest.json"), Path(shards) / "manifest.json"]
    expected = brute_windows(stored.values())
    for source in forms:
        ds = light(source, batch_size=64)
        assert windows_of(ds) == expected, source
        assert collections.Counter(collect(ds)) == expected, source


@pytest.mark.parametrize("selection,names", [
    ("shard-{000000..000002}.tar", ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]),
    ("shard-000003.tar", ["shard-000003.tar"]),
    (["shard-000000.tar", "shard-00000{4,5}.tar"], ["shard-000000.tar", "shard-000004.tar", "shard-000005.tar"]),
])
def test_brace_expanded_shard_lists(shards, stored, selection, names):
    source = ([os.path.join(shards, s) for s in selection] if isinstance(selection, list)
              else os.path.join(shards, selection))
    ds = light(source, batch_size=64)
    expected = brute_windows([f for f in stored.values() if f.shard in names])
    assert sum(expected.values()) > 0
    assert windows_of(ds) == expected
    assert collections.Counter(collect(ds)) == expected
    assert [s.name for s in ds.shards.shards] == names
