"""The epoch-stream protocol (spgdataset/read/stream.py): dataset and router are one kind of stream, their
`iter_epoch` is the window pipeline alone (no thread, no ring: `stream()` adds those, transport.py), one skip
unit (windows) for both, and configuration that only its owner changes.

The shard set is conftest's run16k (9 files of 2 to 7 s, every one annotated with speech and noise).
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, Iterator, List

import pytest

from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter
from spgdataset.read.decode import ShardReader
from spgdataset.read.stream import EpochStream
from spgdataset.storage.folder import LocalStorage

NO_MASKS = {"spectrogram": False, "masks": []}


def dataset(run16k, **kwargs: Any) -> SpectrogramDataset:
    kwargs.setdefault("window_content_ratio", 0)
    kwargs.setdefault("batch_size", 4)
    return SpectrogramDataset(run16k[0], output_configuration=NO_MASKS, seed=3, **kwargs)


def router(run16k, **kwargs: Any) -> SpectrogramDatasetRouter:
    return SpectrogramDatasetRouter([dataset(run16k, **kwargs), dataset(run16k, split=(0.5, 0.5), subset=1, **kwargs)],
                                    weights=[0.6, 0.4], seed=3)


def keys(items: Iterator[Dict[str, Any]]) -> List[Any]:
    return [(tuple(item["key"]), item["start"].tolist()) for item in items]


def threads_started(items: Iterator[Dict[str, Any]], monkeypatch) -> List[str]:
    """The names of the threads started while `items` ran to its end."""
    started, start = [], threading.Thread.start

    def recorded(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    with monkeypatch.context() as patch:
        patch.setattr(threading.Thread, "start", recorded)
        for _ in items:
            pass
    return started


def test_dataset_and_router_are_one_kind_of_stream(run16k):
    with pytest.raises(TypeError, match="abstract"):  # a stream missing part of the protocol cannot be made
        EpochStream()  # type: ignore[abstract]
    for stream in (dataset(run16k), router(run16k)):
        assert isinstance(stream, EpochStream)
        assert len(stream) == sum(stream.worker_items(1)) > 0
        assert sum(1 for _ in stream) == len(stream)
        assert stream.state_dict()["consumed"] == len(stream)


@pytest.mark.parametrize("make", [dataset, router])
def test_iter_epoch_is_the_pipeline_alone_and_starts_no_thread(run16k, make, monkeypatch):
    stream = make(run16k, batch_threads=3)
    assert threads_started(stream.iter_epoch(0), monkeypatch) == []
    assert keys(stream.iter_epoch(0)) == keys(iter(stream))  # the same items as the stream carries


def test_the_stream_reads_ahead_in_the_training_process(run16k, monkeypatch):
    """Items are built ahead of the training loop in one thread; local shards are read in it too (a second
    thread reading cached shards cost 10% more CPU for the same rate), each named to the kernel before it is
    read, so that the disk reads it meanwhile (S3 shards are read in a thread: test_s3.py). Once the epoch's
    last item is built, the next epoch's first files are read in another (test_next_epoch.py)."""
    ds = dataset(run16k, batch_threads=1)
    events: List[Any] = []
    monkeypatch.setattr(LocalStorage, "will_read", lambda storage, name: events.append(("named", name)))
    read_whole = ShardReader.shard_bytes

    def recorded(reader: ShardReader, url: str, shard: Any) -> Any:
        events.append(("read", shard.name))
        return read_whole(reader, url, shard)

    monkeypatch.setattr(ShardReader, "shard_bytes", recorded)
    assert threads_started(iter(ds), monkeypatch) == ["spgdataset-batches", "spgdataset-next-epoch"]
    reads = [name for kind, name in events if kind == "read"]
    assert len(reads) == len(set(reads)) == len(ds.shards.shards) >= 3
    order = ds.epoch_order(0).shards
    assert reads == [ds.shards.manifest.shards[ds.selection.shards[j]].name for j in order]  # the epoch's order
    named = [name for kind, name in events if kind == "named"]
    assert len(named) == len(set(named))  # each once
    for shard in reads[1:]:  # each shard after the first named to the kernel before it is read
        assert events.index(("named", shard)) < events.index(("read", shard)), events


def test_a_router_reads_its_mix_ahead_once(run16k, monkeypatch):
    """The mixed items are read ahead by one thread, not one per dataset; each dataset reads its local shards
    in it."""
    mixed = router(run16k, batch_threads=1)
    assert threads_started(iter(mixed), monkeypatch) == ["spgdataset-batches"]


@pytest.mark.parametrize("make", [dataset, router])
def test_skips_are_counted_in_windows_for_dataset_and_router(run16k, make):
    stream = make(run16k)
    full = keys(stream.iter_epoch(1))
    assert keys(stream.iter_epoch(1, skip_windows=2 * 4)) == full[2:]
    assert keys(stream.iter_epoch(1, skip_windows=4 * 4)) == full[4:]


def test_the_loader_changes_batching_through_the_stream_and_nothing_else(run16k):
    mixed = router(run16k)
    configs = [ds.config for ds in mixed.datasets]
    mixed.loader(batch_size=8, num_workers=0)
    assert mixed.batch_size == 8 and [ds.batch_size for ds in mixed.datasets] == [8, 8]
    for ds, before in zip(mixed.datasets, configs):  # only batching moved
        assert [f.name for f in dataclasses.fields(before) if getattr(ds.config, f.name) is not getattr(before, f.name)] \
            == ["batching"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        mixed.datasets[0].config.batching.batch_size = 2  # type: ignore[misc]


def test_the_reader_sees_the_manifest_as_typed_values(run16k):
    """ShardSet.manifest is the checked manifest.json as typed values: what a reader uses has a type of its own
    (features a FeatureConfig, shards ShardEntry), equal to what the file says."""
    import json
    import os

    from spgdataset import FeatureConfig
    from spgdataset.format.manifest import Manifest, ShardEntry

    with open(os.path.join(run16k[0], "manifest.json"), encoding="utf-8") as f:
        written = json.load(f)
    manifest = dataset(run16k).shards.manifest
    assert isinstance(manifest, Manifest) and manifest.features == FeatureConfig.from_dict(written["features"])
    assert all(isinstance(s, ShardEntry) for s in manifest.shards)
    assert [(s.name, s.files, s.bytes, s.sha256) for s in manifest.shards] == \
        [(s["name"], s["files"], s["bytes"], s["sha256"]) for s in written["shards"]]
    assert (list(manifest.mean), list(manifest.std)) == (written["stats"]["mean"], written["stats"]["std"])
    assert manifest.segments is None and manifest.params == written["params"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.params = "x"  # type: ignore[misc]


def test_a_shard_thread_where_it_pays():
    """Remote shards are read in a thread; local ones only in DataLoader workers (whose one job is batches): in the
    training process the thread cost 10% more CPU for 2-4% of rate (docs/performance.md)."""
    from spgdataset.read.transport import Transport

    in_process, in_worker = Transport(shards_ahead=True), Transport(in_worker=True, shards_ahead=True)
    assert [in_process.shard_thread(local) for local in (True, False)] == [False, True]
    assert [in_worker.shard_thread(local) for local in (True, False)] == [True, True]
    assert not Transport().shard_thread(False)  # iter_epoch alone: nothing read ahead
