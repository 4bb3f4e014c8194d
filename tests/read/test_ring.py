"""Batch memory shared with DataLoader workers is reused only once the consumer holds no reference to it."""

import gc

import numpy as np
import pytest
import torch

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus
from spgdataset.read.ring import BatchRing

OUTPUTS = {"masks": ["speech"], "label": "speaker"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ring")
    metadata = make_corpus(root / "audio", 120, seed=11, min_seconds=4, max_seconds=10)
    write_shards(root / "audio", metadata, root / "shards", max_shard_files=4, workers=1, progress=False)
    return str(root / "shards")


def reference(shards):
    """Every window's spectrogram, label and mask, built in-process (no ring), by (key, start)."""
    dataset = SpectrogramDataset(shards, window_content_ratio=0, output_configuration=OUTPUTS, batch_size=16)
    out = {}
    for batch in dataset:
        for i, (key, start) in enumerate(zip(batch["key"], batch["start"].tolist())):
            out[(key, start)] = (batch["spectrogram"][i].clone(), int(batch["label"][i]), batch["masks"]["speech"][i].clone())
    return out


@pytest.mark.slow
def test_a_consumer_keeping_every_batch_never_sees_them_overwritten(shards):
    expected = reference(shards)
    dataset = SpectrogramDataset(shards, window_content_ratio=0, output_configuration=OUTPUTS, batch_size=16)
    loader = dataset.loader(num_workers=2)
    kept = list(loader)  # holds every batch: far more batches than ring slots
    assert loader.ring is not None and len(kept) > len(loader.ring.storages)
    seen = 0
    for batch in kept:
        for i, (key, start) in enumerate(zip(batch["key"], batch["start"].tolist())):
            spec, label, mask = expected[(key, start)]
            assert torch.equal(batch["spectrogram"][i], spec), (key, start)
            assert int(batch["label"][i]) == label and torch.equal(batch["masks"]["speech"][i], mask)
            seen += 1
    assert seen == len(expected)


@pytest.mark.slow
def test_slots_are_reused_when_released_and_kept_while_a_view_lives(shards):
    expected = reference(shards)
    dataset = SpectrogramDataset(shards, window_content_ratio=0, output_configuration=OUTPUTS, batch_size=16)
    loader = dataset.loader(num_workers=2)
    ring = loader.ring
    views = []
    slot_backed = 0
    for n, batch in enumerate(loader):
        pointer = batch["spectrogram"].untyped_storage().data_ptr()
        slot_backed += any(s.data_ptr() == pointer for s in ring.storages)
        if n % 5 == 0:  # keep one window of some batches alive as a view, drop the batch itself
            views.append((batch["key"][0], int(batch["start"][0]), batch["spectrogram"][0]))
        del batch
        gc.collect()
    assert slot_backed > len(ring.storages), "slots were never reused"
    for key, start, view in views:
        assert torch.equal(view, expected[(key, start)][0]), (key, start)


def test_ring_claims_only_the_workers_own_free_slots():
    ring = BatchRing(slots=6, nbytes=4 * 10, num_workers=2)
    a = ring.claim(0, (10,), torch.float32)
    b = ring.claim(1, (10,), torch.float32)
    assert a is not None and b is not None and a.data_ptr() != b.data_ptr()
    assert ring.claim(0, (11,), torch.float32) is None  # other size: the caller allocates
    assert ring.state.tolist() == [1, 1, 0, 0, 0, 0]
    packed = ring.pack({"spectrogram": a, "label": torch.arange(3), "big": torch.zeros(1 << 17, dtype=torch.int64)})
    assert isinstance(packed["label"], dict) and isinstance(packed["big"], torch.Tensor)
    batch = ring.unpack(packed)
    assert ring.state.tolist()[0] == 2 and torch.equal(batch["label"], torch.arange(3))
    del a
    ring.release_unreferenced()
    assert ring.state.tolist()[0] == 2  # the unpacked batch still holds slot 0
    del batch
    ring.release_unreferenced()
    assert ring.state.tolist()[0] == 0
    assert np.count_nonzero(ring.state.numpy()) == 1  # slot 1 is still the worker's
