"""The next epoch's first files, read while the current one drains (spgdataset/read/nextepoch.py): taken by the
next epoch's first read instead of reading them again, the same items either way, a guess that follows how the
stream is used, and a failure left for the epoch itself to report once."""

from __future__ import annotations

import os
import shutil
import threading
import time
from typing import Any, List, Tuple

import pytest

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus
from spgdataset.read.decode import ShardReader
from spgdataset.read.nextepoch import NextEpoch
from spgdataset.read.stages import first_reads


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """About 50 files of 2-3 s in shards of 20: an epoch's first chunk (4 batches of 4, at least 8 files) is fewer
    than half a shard, so its files are read alone."""
    root = tmp_path_factory.mktemp("corpus")
    meta = make_corpus(root, total_seconds=130, seed=5, rates=(16000,), min_seconds=2, max_seconds=3)
    out = tmp_path_factory.mktemp("shards")
    write_shards(str(root), meta, str(out), max_shard_files=20, workers=1, progress=False)
    return str(out)


def make(shards: str, **kwargs: Any) -> SpectrogramDataset:
    kwargs.setdefault("on_error", "raise")
    return SpectrogramDataset(shards, window_content_ratio=0, batch_size=4, seed=5, shuffle_buffer=64,
                              output_configuration={"spectrogram": True, "masks": ["speech"]}, **kwargs)


def starts_alone(ds: SpectrogramDataset, epoch: int) -> bool:
    """Whether `epoch` starts with files read alone (with seed 5: epochs 0, 1, 2, 4, 7, 10, 11)."""
    return bool(first_reads(ds.epoch_order(epoch), ds.plan_epoch(epoch), ds.selection.bounds))


def items(batches: Any) -> List[Tuple[Any, ...]]:
    return [(key, start, spec.sum().item()) for b in batches
            for key, start, spec in zip(b["key"], b["start"].tolist(), b["spectrogram"])]


def wait_for_the_next_epoch() -> None:
    deadline = time.monotonic() + 10
    while any(t.name == "spgdataset-next-epoch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "spgdataset-next-epoch" for t in threading.enumerate())


def count_foreground_reads(monkeypatch) -> List[int]:
    """Files read alone by any thread but the background one, from now on."""
    counted: List[int] = []
    read = ShardReader.read_alone

    def recorded(reader: ShardReader, k: int, position: int, place: Any) -> Any:
        if threading.current_thread().name != "spgdataset-next-epoch":
            counted.append(position)
        return read(reader, k, position, place)

    monkeypatch.setattr(ShardReader, "read_alone", recorded)
    return counted


@pytest.mark.parametrize("next_epoch", [1, 0])  # a training loop (set_epoch), a validation loader (never)
def test_the_next_epochs_first_files_are_read_while_the_last_one_drains(shards, monkeypatch, next_epoch):
    ds = make(shards)
    assert starts_alone(ds, next_epoch)
    assert len(items(iter(ds))) == ds.num_windows()
    wait_for_the_next_epoch()
    counted = count_foreground_reads(monkeypatch)
    ds.set_epoch(next_epoch)
    first = next(iter(ds))
    assert counted == [], "the epoch's first files were read again, not taken from the background read"
    expected = items(make(shards).iter_epoch(next_epoch))  # a fresh dataset, no thread: the same items
    ds.set_epoch(next_epoch)
    assert items(iter(ds)) == expected and items([first]) == expected[:4]


def test_the_guess_follows_the_epochs_read():
    guess = NextEpoch()
    assert guess.guesses(0) == [1, 0]  # nothing to go by: both
    assert guess.guesses(1) == [2]  # set_epoch(e + 1) each time
    assert guess.guesses(2) == [3]
    assert guess.guesses(2) == [2]  # read twice: a loader that never calls set_epoch
    assert guess.guesses(7) == [8, 7]


def test_a_wrong_guess_reads_the_epoch_as_usual(shards, monkeypatch):
    ds = make(shards)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert len(items(iter(ds))) == ds.num_windows()
    wait_for_the_next_epoch()  # epoch 2 prepared
    counted = count_foreground_reads(monkeypatch)
    assert starts_alone(ds, 10)
    ds.set_epoch(10)
    assert items(iter(ds)) == items(make(shards).iter_epoch(10))
    assert counted, "epoch 10 was not prepared, so its first files are read when it starts"


def test_a_failed_background_read_is_reported_once_by_the_epoch(shards, tmp_path):
    """A shard that broke after the last epoch: the background read of its files fails in silence; the epoch
    then meets it, and in warn mode counts it once and makes up its windows."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    ds = make(str(copy), on_error="warn")
    assert starts_alone(ds, 0)
    assert len(items(iter(ds))) == ds.num_windows()
    wait_for_the_next_epoch()
    for name in os.listdir(copy):
        if name.endswith(".tar"):  # a new file (another inode): hashed again; each member's bytes changed
            path = copy / name
            data = bytearray(path.read_bytes())
            for at in range(1024 + 200, len(data) - 2048, 4096):
                data[at] ^= 0xFF
            path.unlink()
            path.write_bytes(bytes(data))
    ds.reader.last_shard = None  # (the last shard's bytes, kept from the last epoch, were checked when read)
    ds.after_epoch(0, 0, 1)  # prepare epoch 0 again (read twice: the guess is the same epoch)
    wait_for_the_next_epoch()
    assert ds.skipped_shards == 0 and ds.errors == []
    with pytest.raises(Exception, match="every shard of this worker's share was skipped"):
        items(iter(ds))
    assert ds.skipped_shards == len(ds.shards.shards)  # each once, by the epoch


def test_persistent_workers_prepare_their_own_next_epoch(shards):
    ds = make(shards)
    loader = ds.loader(batch_size=4, num_workers=2)
    seen = []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        seen.append(sorted(items(loader)))
    fresh = make(shards)
    for epoch in (0, 1, 2):
        fresh.set_epoch(epoch)
        assert seen[epoch] == sorted(items(fresh.loader(batch_size=4, num_workers=2, persistent_workers=False)))
