"""SpectrogramDatasetRouter: rates, stop policies, one label space, checks, determinism with workers, resume.

Three small generated corpora with different speaker names (so their label vocabularies differ and
overlap), plus the third one sharded again with 64 mels for the mismatch check. Windows every frame
(window_offset_sec=0.01) with window_content_ratio=0 give thousands of windows from seconds of audio;
outputs are light (no spectrogram) unless a test needs them.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from spgdataset import FeatureConfig, SpectrogramDataset, SpectrogramDatasetRouter, write_shards
from spgdataset.demo import make_corpus
from spgdataset.read.schedule import count_before, normalize_weights, schedule, stop_limits, window_time

# speaker renames per corpus: A keeps the demo names, B shares spk01/spk02 with A, C shares spk06
RENAMES = {
    "a": {},
    "b": {"spk03": "owl", "spk04": "bat", "spk05": "owl", "spk06": "bat"},
    "c": {"spk02": "spk06", "spk03": "wren", "spk04": "wren", "spk05": "wren"},  # spk01's file: no speaker
}
SECONDS = {"a": 40, "b": 20, "c": 14}
LIGHT = {"spectrogram": False, "masks": [], "meta": ["speaker"], "label": "speaker"}

Triple = Tuple[int, str, int]  # (dataset, key, start)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Dict[str, str]:
    out = {}
    for seed, name in enumerate(("a", "b", "c"), 1):
        root = tmp_path_factory.mktemp(f"router_{name}")
        meta_path = make_corpus(root / "audio", total_seconds=SECONDS[name], seed=seed, min_seconds=2, max_seconds=5)
        with open(meta_path) as f:
            metadata = json.load(f)
        for i, entry in enumerate(metadata.values()):
            speaker = entry["metadata"]["speaker"]
            entry["metadata"]["speaker"] = RENAMES[name].get(speaker, speaker)
            if name == "c" and i == 0:
                del entry["metadata"]["speaker"]  # label -1 must stay -1
        with open(meta_path, "w") as f:
            json.dump(metadata, f)
        write_shards(root / "audio", meta_path, root / "shards", max_shard_files=3, workers=1, progress=False)
        out[name] = str(root / "shards")
        if name == "c":
            write_shards(root / "audio", meta_path, root / "shards64", features=FeatureConfig(n_mels=64),
                         workers=1, progress=False)
            out["c64"] = str(root / "shards64")
    return out


def light(source: str, **kwargs: Any) -> SpectrogramDataset:
    kwargs.setdefault("output_configuration", LIGHT)
    return SpectrogramDataset(source, window_content_ratio=0, window_offset_sec=0.01, **kwargs)


def datasets(shards: Dict[str, str], names: str = "abc", **kwargs: Any) -> List[SpectrogramDataset]:
    return [light(shards[n], **kwargs) for n in names]


def triples(item: Dict[str, Any]) -> List[Triple]:
    if isinstance(item["key"], list):
        assert item["dataset"].shape == item["start"].shape == (len(item["key"]),)
        return list(zip(item["dataset"].tolist(), item["key"], item["start"].tolist()))
    return [(int(item["dataset"]), item["key"], int(item["start"]))]


def collect(items) -> List[Triple]:
    return [t for item in items for t in triples(item)]


def per_dataset(seq: List[Triple]) -> collections.Counter:
    return collections.Counter(d for d, _, _ in seq)


def windows_of(ds: SpectrogramDataset) -> collections.Counter:
    return collections.Counter(ds.windows())


def shards_windows(shards: Dict[str, str], name: str) -> int:
    return light(shards[name]).num_windows()


def of_dataset(seq: List[Triple], i: int) -> List[Tuple[str, int]]:
    return [(k, s) for d, k, s in seq if d == i]


# ---------------------------------------------------------------- the schedule (pure functions)


def test_schedule_rates_order_and_limits():
    rng = np.random.default_rng(0)
    for _ in range(100):
        d = int(rng.integers(1, 6))
        w = normalize_weights(rng.random(d) + 0.01)
        phases = rng.random(d)
        ids = np.concatenate(list(schedule(w, phases, [None] * d, total=3000, block=int(rng.integers(1, 500)))))
        assert len(ids) == 3000
        prefix = np.cumsum(np.eye(d, dtype=np.int64)[ids], axis=0)
        deviation = np.abs(prefix - np.arange(1, 3001)[:, None] * w)
        assert np.all(deviation < 1 + d * w)  # the bound the module docstring states
        # the order is (virtual time, dataset), whatever the block size
        k = np.zeros(d, dtype=np.int64)
        keys = []
        for i in ids:
            keys.append((window_time(int(k[i]), phases[i], w[i]), int(i)))
            k[i] += 1
        assert keys == sorted(keys)
        limits = [int(n) for n in rng.integers(0, 400, size=d)]
        ids = np.concatenate(list(schedule(w, phases, limits, block=97)) or [np.zeros(0, np.int64)])
        assert np.bincount(ids, minlength=d).tolist() == limits


def test_count_before_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w, phase = float(rng.random() + 1e-3), float(rng.random())
        times = [window_time(k, phase, w) for k in range(200)]
        for t in (*rng.uniform(0, times[-1], 5), times[int(rng.integers(0, 150))]):
            assert count_before(t, phase, w) == sum(x < t for x in times)
            assert count_before(t, phase, w, inclusive=True) == sum(x <= t for x in times)


def test_first_exhausted_limits_stop_before_the_first_missing_window():
    rng = np.random.default_rng(2)
    for _ in range(200):
        d = int(rng.integers(1, 5))
        w, phases = normalize_weights(rng.random(d) + 0.05), rng.random(d)
        windows = [int(n) for n in rng.integers(0, 60, size=d)]
        limits = stop_limits(windows, w, phases, "first_exhausted")
        # brute force: walk the unlimited schedule until it asks a dataset for a window it lacks
        taken = [0] * d
        for i in np.concatenate(list(schedule(w, phases, [None] * d, total=sum(windows) + 1))):
            if taken[i] == windows[i]:
                break
            taken[i] += 1
        assert limits == taken


# ---------------------------------------------------------------- rates


def test_weights_give_the_fractions_over_20000_windows_and_in_every_batch(shards):
    weights = (0.7, 0.2, 0.1)
    router = SpectrogramDatasetRouter(datasets(shards, batch_size=100), weights=weights, seed=1, stop="resample",
                                      epoch_length=20_000)
    batches = list(router)
    assert len(batches) == len(router) == 200
    seq = collect(batches)
    counts = per_dataset(seq)
    assert sum(counts.values()) == 20_000
    for i, w in enumerate(weights):
        assert abs(counts[i] / 20_000 - w) < 0.01
        assert abs(counts[i] - 20_000 * w) < 1 + 3 * w  # exact up to rounding, not just within 1 pp
    for batch in batches:  # the mix is inside each batch
        c = torch.bincount(batch["dataset"], minlength=3).tolist()
        assert all(abs(c[i] - 100 * w) < 1 + 3 * w for i, w in enumerate(weights))


def test_default_weights_follow_window_counts(shards):
    dss = datasets(shards, "ab")
    router = SpectrogramDatasetRouter(datasets=dss)  # the reference's call: a plain list
    n = [ds.num_windows() for ds in dss]
    assert np.allclose(router.weights, np.array(n) / sum(n))
    seq = collect(router)
    counts = per_dataset(seq)
    assert all(n[i] - 2 <= counts[i] <= n[i] for i in range(2))  # both run out at about the same time


# ---------------------------------------------------------------- contents


def rows_of(batches: List[Dict[str, Any]], dataset: Optional[int] = None) -> List[Dict[str, Any]]:
    """Per-window dicts of batches (of one dataset's windows when given), tensors as they are."""
    out = []
    for batch in batches:
        for i in range(len(batch["key"])):
            if dataset is not None and int(batch["dataset"][i]) != dataset:
                continue
            out.append({name: ({k: v[i] for k, v in value.items()} if isinstance(value, dict) else value[i])
                        for name, value in batch.items() if name != "dataset"})
    return out


def assert_same_rows(got: List[Dict[str, Any]], want: List[Dict[str, Any]], label_map=None) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g["key"], int(g["start"])) == (w["key"], int(w["start"]))
        assert torch.equal(g["spectrogram"], w["spectrogram"]) and g["spectrogram"].dtype == torch.float32
        assert torch.equal(g["masks"]["speech"], w["masks"]["speech"])
        assert int(g["label"]) == (int(label_map[w["label"]]) if label_map is not None else int(w["label"]))


def full(source: str, **kwargs: Any) -> SpectrogramDataset:
    """Spectrogram, mask and label, windows every 0.1 s."""
    return SpectrogramDataset(source, window_content_ratio=0, seed=3,
                              output_configuration={"masks": ["speech"], "label": "speaker"}, **kwargs)


def test_router_over_one_dataset_yields_its_batches(shards):
    alone = list(full(shards["a"], batch_size=16))
    routed = list(SpectrogramDatasetRouter([full(shards["a"], batch_size=16)]))
    assert [len(b["key"]) for b in routed] == [len(b["key"]) for b in alone]
    assert all(torch.equal(b["dataset"], torch.zeros(len(b["key"]), dtype=torch.int64)) for b in routed)
    assert_same_rows(rows_of(routed), rows_of(alone))


def test_mixed_batches_hold_each_dataset_stream_in_order(shards):
    """Dataset i's windows in the router's batches are dataset i's own epoch, in order, contents and all."""
    router = SpectrogramDatasetRouter([full(shards[n], batch_size=16) for n in "ab"], weights=[0.6, 0.4],
                                      stop="all_exhausted")
    router.set_epoch(1)
    batches = list(router)
    for i, name in enumerate("ab"):
        alone = full(shards[name], batch_size=16)
        alone.set_epoch(1)
        assert_same_rows(rows_of(batches, i), rows_of(list(alone)), router.label_maps[i])


# ---------------------------------------------------------------- stop policies


def test_first_exhausted_stops_when_one_dataset_runs_out(shards):
    a, b = dss = datasets(shards, "ab")
    assert a.num_windows() > 1.5 * b.num_windows()
    router = SpectrogramDatasetRouter(dss, weights=[0.5, 0.5], seed=3, stop="first_exhausted")
    seq = collect(router)
    counts = per_dataset(seq)
    assert counts[1] == b.num_windows()  # b ran out ...
    assert abs(counts[0] - counts[1]) <= 1 < a.num_windows() - counts[0]  # ... and a stopped with it
    assert len(seq) == len(set(seq)) == len(router)
    assert set(of_dataset(seq, 0)) <= set(a.windows()) and collections.Counter(of_dataset(seq, 1)) == windows_of(b)
    deadline = time.monotonic() + 5  # a's reading stopped with the epoch (no read-ahead thread left behind)
    while any(t.name.startswith("spgdataset-") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("spgdataset-") for t in threading.enumerate())


def test_all_exhausted_goes_on_with_the_others(shards):
    a, b = dss = datasets(shards, "ab")
    router = SpectrogramDatasetRouter(dss, weights=[0.5, 0.5], seed=3, stop="all_exhausted")
    seq = collect(router)
    assert len(seq) == len(router) == a.num_windows() + b.num_windows()
    assert collections.Counter(of_dataset(seq, 0)) == windows_of(a)  # every window once
    assert collections.Counter(of_dataset(seq, 1)) == windows_of(b)
    last_b = max(i for i, t in enumerate(seq) if t[0] == 1)
    head = per_dataset(seq[: last_b + 1])
    assert abs(head[0] - head[1]) <= 1  # 50/50 while both run ...
    assert {t[0] for t in seq[last_b + 1 :]} == {0}  # ... then only a: the rates changed


def test_resample_never_runs_out_and_reshuffles_each_pass(shards):
    a, b = dss = datasets(shards, "ab")
    n_b = b.num_windows()
    length = 6 * n_b  # b needs three passes, a more than one
    router = SpectrogramDatasetRouter(dss, weights=[0.5, 0.5], seed=3, stop="resample", epoch_length=length)
    seq = collect(router)
    assert len(seq) == len(router) == length
    assert per_dataset(seq) == {0: length // 2, 1: length // 2}
    b_seq = of_dataset(seq, 1)
    passes = [b_seq[p * n_b : (p + 1) * n_b] for p in range(3)]
    for p in passes:
        assert collections.Counter(p) == windows_of(b)  # each pass is all of b, once
    assert passes[0] != passes[1] != passes[2]  # in a new order
    assert collections.Counter(of_dataset(seq, 0)[: a.num_windows()]) == windows_of(a)
    router.set_epoch(1)
    next_epoch = of_dataset(collect(router), 1)
    assert next_epoch[:n_b] not in passes  # epoch 1 does not replay a pass of epoch 0


@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted", "resample"])
@pytest.mark.parametrize("batch_size, drop_last", [(None, False), (48, False), (48, True)])
def test_len_equals_items_yielded(shards, stop, batch_size, drop_last):
    dss = datasets(shards, "abc", batch_size=batch_size, drop_last=drop_last)
    router = SpectrogramDatasetRouter(dss, weights=[0.3, 0.3, 0.4], seed=2, stop=stop,
                                      epoch_length=5000 if stop == "resample" else None)
    for epoch in (0, 1):
        router.set_epoch(epoch)
        items = list(router)
        assert len(items) == len(router)
        if batch_size:
            sizes = [len(b["key"]) for b in items]
            assert all(s == batch_size for s in sizes[:-1]) and (sizes[-1] == batch_size or not drop_last)


def test_ddp_ranks_get_equal_counts(shards):
    """Each rank's datasets hold different windows; the router still yields the same count on every rank."""
    results = []
    for rank in (0, 1):
        dss = [light(shards[n], rank=rank, world_size=2, batch_size=32) for n in "abc"]
        router = SpectrogramDatasetRouter(dss, weights=[0.2, 0.5, 0.3], seed=4, stop="first_exhausted")
        items = list(router)
        results.append((len(router), len(items), collect(items)))
    assert results[0][:2] == results[1][:2] and results[0][0] == results[0][1]
    assert not set(results[0][2]) & set(results[1][2])  # no window on both ranks


# ---------------------------------------------------------------- labels


def test_labels_merged_into_one_sorted_vocabulary(shards):
    dss = datasets(shards, "abc")
    router = SpectrogramDatasetRouter(dss, stop="all_exhausted")
    names = {"spk01", "spk02", "spk03", "spk04", "spk05", "spk06", "owl", "bat", "wren"}
    assert set(dss[1].label_vocabulary) == {"spk01", "spk02", "owl", "bat"}
    assert router.label_vocabulary == sorted(names)
    ids_by_name: Dict[str, set] = collections.defaultdict(set)
    datasets_by_name: Dict[str, set] = collections.defaultdict(set)
    unlabelled = 0
    for item in router:
        label, speaker = int(item["label"]), item["meta"]["speaker"]
        if speaker is None:
            assert label == -1 and item["dataset"] == 2  # -1 stays -1
            unlabelled += 1
            continue
        assert router.label_vocabulary[label] == speaker
        ids_by_name[speaker].add(label)
        datasets_by_name[speaker].add(item["dataset"])
    assert unlabelled > 0
    assert datasets_by_name["spk01"] == {0, 1} and datasets_by_name["spk06"] == {0, 2}  # shared names ...
    assert all(len(ids) == 1 for ids in ids_by_name.values())  # ... get one id
    assert len({min(ids) for ids in ids_by_name.values()}) == len(ids_by_name)  # different names, different ids


def test_labels_remapped_in_batches(shards):
    dss = datasets(shards, "bc", batch_size=64)
    router = SpectrogramDatasetRouter(dss, stop="all_exhausted")
    for batch in router:
        for label, speaker in zip(batch["label"].tolist(), batch["meta"]["speaker"]):
            assert (router.label_vocabulary[label] if label >= 0 else None) == speaker


# ---------------------------------------------------------------- construction checks


@pytest.mark.parametrize("other, words", [
    (lambda s: light(s["c64"]), ["n_mels=64", "n_mels=80"]),
    (lambda s: SpectrogramDataset(s["b"], window_size_sec=1.0, window_content_ratio=0, window_offset_sec=0.01,
                                  output_configuration=LIGHT), ["window=100", "window=192"]),
    (lambda s: SpectrogramDataset(s["b"], window_content_ratio=0, output_configuration=LIGHT),
     ["step=10", "step=1"]),
    (lambda s: light(s["b"], output_configuration=dict(LIGHT, masks=["speech"])), ["masks", "speech"]),
    (lambda s: light(s["b"], output_configuration=dict(LIGHT, label=None)), ["label=False", "label=True"]),
    (lambda s: light(s["b"], batch_size=32), ["batch_size=32", "batch_size=None"]),
])
def test_mismatches_are_refused_with_a_clear_message(shards, other, words):
    with pytest.raises(ValueError) as err:
        SpectrogramDatasetRouter([light(shards["a"]), other(shards)])
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "dataset 1" in str(err.value)


@pytest.mark.parametrize("kwargs, words", [
    ({"stop": "resample"}, "epoch_length"),
    ({"stop": "first_exhausted", "epoch_length": 100}, "only for stop='resample'"),
    ({"stop": "longest"}, "stop must be one of"),
    ({"weights": [1.0]}, "1 weights for 2 datasets"),
    ({"weights": [1.0, -1.0]}, "non-negative"),
])
def test_bad_arguments(shards, kwargs, words):
    with pytest.raises(ValueError, match=words):
        SpectrogramDatasetRouter(datasets(shards, "ab"), **kwargs)


# ---------------------------------------------------------------- determinism, workers, epochs


def run_epochs(shards, num_workers: int, stop: str, epochs=(1, 2), seed: int = 5) -> List[List[Triple]]:
    router = SpectrogramDatasetRouter(datasets(shards, "abc"), weights=[0.5, 0.3, 0.2], seed=seed, stop=stop,
                                      epoch_length=4000 if stop == "resample" else None)
    loader = router.loader(batch_size=32, num_workers=num_workers)
    out = []
    for epoch in epochs:
        router.set_epoch(epoch)  # after the workers exist: they must see it
        batches = list(loader)
        assert len(batches) == len(loader) == len(router)
        out.append(collect(batches))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["first_exhausted", "all_exhausted", "resample"])
def test_same_seed_and_epoch_same_sequence_with_0_and_2_workers(shards, stop):
    by_workers = {}
    for num_workers in (0, 2):
        first, again = run_epochs(shards, num_workers, stop), run_epochs(shards, num_workers, stop)
        assert first == again  # same seed and epoch: the same (dataset, key, start) sequence
        assert first[0] != first[1]  # another epoch: another sequence
        by_workers[num_workers] = first
    if stop == "all_exhausted":  # each worker count covers every window of every dataset once
        assert collections.Counter(by_workers[0][0]) == collections.Counter(by_workers[2][0])


@pytest.mark.slow
def test_single_windows_through_a_dataloader_with_workers(shards):
    def run() -> List[Triple]:
        dss = [SpectrogramDataset(shards[n], window_content_ratio=0, output_configuration=LIGHT, num_workers=2)
               for n in "ab"]  # windows every 0.1 s: a few hundred, each through the workers' queue
        router = SpectrogramDatasetRouter(dss, weights=[0.6, 0.4], seed=1)
        items = list(DataLoader(router, batch_size=None, num_workers=2))
        assert len(items) == len(router)
        return collect(items)

    assert run() == run()


def test_set_epoch_reaches_every_dataset(shards):
    dss = datasets(shards, "abc")
    router = SpectrogramDatasetRouter(dss)
    router.set_epoch(3)
    assert router.epoch == 3 and [ds.epoch for ds in dss] == [3, 3, 3]


# ---------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["first_exhausted", "resample"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch(shards, stop, num_workers):
    def make() -> SpectrogramDatasetRouter:
        return SpectrogramDatasetRouter(datasets(shards, "abc"), weights=[0.5, 0.3, 0.2], seed=7, stop=stop,
                                        epoch_length=5000 if stop == "resample" else None)

    router = make()
    router.set_epoch(2)
    loader = router.loader(batch_size=32, num_workers=num_workers)
    full = [collect([b]) for b in loader]
    cut = 110 if stop == "resample" else 40  # under "resample": into the second pass of b and c
    state = None
    for n, _ in enumerate(loader, 1):
        if n == cut:
            state = loader.state_dict()
            break
    assert state["consumed"] == cut and state["epoch"] == 2
    resumed = make()
    loader = resumed.loader(batch_size=32, num_workers=num_workers)
    loader.load_state_dict(state)
    rest = [collect([b]) for b in loader]
    assert rest == full[cut:]  # exactly the uninterrupted run, workers or not (restarted workers play rotated roles)
    resumed.set_epoch(3)
    assert len(list(loader)) == len(resumed)  # the next epoch is whole again


def test_resume_single_windows_in_process(shards):
    def make() -> SpectrogramDatasetRouter:
        return SpectrogramDatasetRouter(datasets(shards, "abc"), weights=[0.5, 0.3, 0.2], seed=7, stop="resample",
                                        epoch_length=6000)

    router = make()
    full = collect(router)
    seen = []
    for item in router:
        seen.extend(triples(item))
        if len(seen) == 3000:  # b and c are in their second pass
            break
    state = router.state_dict()
    assert state["consumed"] == 3000 and per_dataset(seen)[2] > shards_windows(shards, "c")
    resumed = make()
    resumed.load_state_dict(state)
    assert seen + collect(resumed) == full
    assert collect(resumed) == full  # the epoch after the resumed one starts from its beginning


def test_resume_accepts_another_world_size_and_refuses_another_shard_set(shards):
    def make(names: str = "abc", **kwargs: Any) -> SpectrogramDatasetRouter:
        return SpectrogramDatasetRouter(datasets(shards, names, **kwargs), weights=[0.5, 0.3, 0.2][: len(names)],
                                        seed=7)

    state = make(rank=0, world_size=2).state_dict()
    make(rank=1, world_size=2).load_state_dict(state)
    make(rank=0, world_size=3).load_state_dict({**state, "consumed": 1})  # a finished stage, then the rest
    resample = {**state, "stop": "resample", "epoch_length": 40}
    with pytest.raises(ValueError, match="world_size"):  # "resample" cycles passes per worker: its own layout only
        SpectrogramDatasetRouter(datasets(shards, "abc", rank=0, world_size=3), weights=[0.5, 0.3, 0.2], seed=7,
                                 stop="resample", epoch_length=40).load_state_dict(resample)
    with pytest.raises(ValueError, match="shards"):  # same window counts, other shards
        make("acb", rank=0, world_size=2).load_state_dict({**state, "windows": make("acb").state_dict()["windows"],
                                                           "weights": make("acb").state_dict()["weights"]})


def test_datasets_holding_frames_in_other_dtypes_mix_exactly(shards):
    """A batch is gathered straight from each dataset's chunk (chunks.take_parts); a dataset normalised on load
    holds its frames in float32 and one that is not in float16: each part is still its dataset's own values."""
    def make(name: str, normalize: bool) -> SpectrogramDataset:
        return SpectrogramDataset(shards[name], window_content_ratio=0, seed=3, batch_size=16, normalize=normalize,
                                  dtype=torch.float16, output_configuration={"masks": ["speech"]})

    router = SpectrogramDatasetRouter([make("a", True), make("b", False)], weights=[0.5, 0.5], stop="all_exhausted")
    batches = list(router)
    assert all(b["spectrogram"].dtype == torch.float16 for b in batches)
    for i, (name, normalize) in enumerate([("a", True), ("b", False)]):
        got, want = rows_of(batches, i), rows_of(list(make(name, normalize)))
        assert [(g["key"], int(g["start"])) for g in got] == [(w["key"], int(w["start"])) for w in want]
        assert all(torch.equal(g["spectrogram"], w["spectrogram"]) for g, w in zip(got, want))
