"""Random access (read/access.py): `ds[i]` is the i-th window of an unshuffled epoch, `ds.map_style()` the same
windows for any sampler, each file read alone from its byte range (the index's member columns, or a walk of
the shard for a set written without them), checked, and kept within `max_memory_cache`.

Everything is real: shards written by write_shards, read from disk or from the moto S3 server (tests/s3server.py),
DataLoader workers as processes."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Subset

from spgdataset import ShardError, SpectrogramDataset
from spgdataset.format.index import BadIndex, decode
from tests.helpers import Shards
from tests.read import test_untrusted_index_and_values as untrusted

OUTPUTS = {"spectrogram": True, "masks": ["speech"], "label": "speaker", "meta": ["gender"]}
CASES = {
    "global_norm": dict(output_configuration=OUTPUTS),
    "window_norm_float16": dict(output_configuration=OUTPUTS, normalize="window", dtype=torch.float16),
    "pad_short_no_norm": dict(output_configuration=OUTPUTS, normalize=False, window_size_sec=4.0, pad_short=True),
    "split_and_content": dict(output_configuration=OUTPUTS, split=(0.5, 0.5), subset=1,
                              content_intervals=["speech"], window_content_ratio=0.5, window_offset_sec=0.05),
}
MEMBER_COLUMNS = ("member.offset", "member.bytes", "member.blake2b")
edit_columns = untrusted.edit_columns  # index.bin rewritten with raw columns changed, the manifest made to agree
segmented = untrusted.segmented  # the fixture: corpus16k in segments of 2.03 s (format 3)


def same(a: Any, b: Any) -> bool:
    """Equal items: tensors of one dtype and shape with equal values, dicts with the same keys in the same order."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return type(a) is type(b) and a == b


def iterated(source: str, **kwargs: Any) -> List[Dict[str, Any]]:
    return list(SpectrogramDataset(source, shuffle=False, **kwargs))


def assert_all_equal(ds: SpectrogramDataset, expected: List[Dict[str, Any]]) -> None:
    assert ds.num_windows() == len(expected) == len(ds.map_style()) > 0
    for i, item in enumerate(expected):
        assert same(ds[i], item), (i, item["key"], int(item["start"]))
    assert same(ds[-1], expected[-1]) and same(ds[-len(expected)], expected[0])


def without_member_columns(src: str, dst: Path) -> Shards:
    """A copy of a shard set as it was written before the member columns: same shards, index without them."""
    shards = Shards(src, dst)
    edit_columns(shards, lambda columns: [columns.pop(name) for name in MEMBER_COLUMNS])
    assert decode((dst / "index.bin").read_bytes()).members is None
    return shards


def shard_and_key(ds: SpectrogramDataset, i: int):
    """(shard name, key) of the file of window i."""
    index = ds.shards.index
    j = int(np.searchsorted(np.cumsum(ds.selection.counts), i, side="right"))
    position = int(ds.selection.files[j])
    return ds.shards.manifest.shards[int(index.shard[position])].name, index.keys[position]


# ---------------------------------------------------------------- the index's member columns


def test_member_columns_point_at_each_files_members(run16k):
    out = Path(run16k[0])
    index = decode((out / "index.bin").read_bytes())
    names = [s["name"] for s in json.loads((out / "manifest.json").read_text())["shards"]]
    offsets, sizes, digests = index.members
    for i in range(index.files):
        data = (out / names[index.shard[i]]).read_bytes()
        span = data[offsets[i] : offsets[i] + sizes[i]]
        with tarfile.open(fileobj=io.BytesIO(span + bytes(1024))) as tar:
            assert {m.name.split(".", 1)[0] for m in tar.getmembers()} == {index.keys[i]}
        assert hashlib.blake2b(span, digest_size=16).digest() == digests[i].tobytes()
    assert sorted(offsets[index.shard == 0]) == list(offsets[index.shard == 0]) and offsets[0] == 0


def test_member_columns_come_all_three_or_none(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    edit_columns(shards, lambda columns: columns.pop("member.blake2b"))
    with pytest.raises(BadIndex, match="member.blake2b"):
        decode((shards.folder / "index.bin").read_bytes())
    with pytest.raises(ShardError, match=r"index.bin: .*member.blake2b"):
        SpectrogramDataset(str(shards))


def test_an_unknown_column_is_read_past(run16k, tmp_path):
    """What lets a reader before the member columns read a set that has them: columns it does not know."""
    shards = Shards(run16k[0], tmp_path / "s")
    edit_columns(shards, lambda columns: columns.update({"from.the.future": np.arange(5, dtype="<i8")}))
    assert SpectrogramDataset(str(shards)).windows() == SpectrogramDataset(run16k[0]).windows()


# ---------------------------------------------------------------- ds[i] is the iterated window


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_window_equals_the_iterated_one(run16k, case):
    ds = SpectrogramDataset(run16k[0], shuffle=True, **CASES[case])  # the dataset's own shuffle plays no part
    assert_all_equal(ds, iterated(run16k[0], **CASES[case]))
    assert ds.map_style().walked == {}  # found by the member columns: no shard walked


def test_audio_and_the_valid_mask_equal_the_iterated_ones(mixed_run):
    kwargs = dict(output_configuration={"audio": True, "masks": ["speech"], "spectrogram": True},
                  window_size_sec=1.5, window_offset_sec=0.2, pad_short=True)
    ds = SpectrogramDataset(mixed_run[0], **kwargs)
    expected = iterated(mixed_run[0], **kwargs)
    assert "valid" in expected[0]["masks"] and not all(item["masks"]["valid"].all() for item in expected)
    assert_all_equal(ds, expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_list_of_indices_is_the_streaming_batch_of_those_windows(run16k, case):
    ds = SpectrogramDataset(run16k[0], **CASES[case])
    windows, size = ds.map_style(), 7
    streamed = next(iter(SpectrogramDataset(run16k[0], shuffle=False, batch_size=size, **CASES[case])))
    assert same(windows[list(range(size))], streamed)  # the layout and the values of an unshuffled batch
    picked = [5, -1, 0, 5, 2]
    batch = windows[np.array(picked)]
    items = [ds[i] for i in picked]
    assert batch["spectrogram"].is_contiguous() and batch["key"] == [item["key"] for item in items]
    for name in ("spectrogram", "label", "start"):
        assert torch.equal(batch[name], torch.stack([item[name] for item in items]))
    assert torch.equal(batch["masks"]["speech"], torch.stack([item["masks"]["speech"] for item in items]))
    assert batch["meta"] == {"gender": [item["meta"]["gender"] for item in items]}
    assert same(windows[torch.tensor(picked)], batch) and same(windows[(5, -1, 0, 5, 2)], batch)


def test_items_share_memory_with_nothing(run16k):
    """An in-place edit of one item (a transform's `x -= mean`) changes neither the cache nor another item."""
    ds = SpectrogramDataset(run16k[0], output_configuration=OUTPUTS)
    windows = ds.map_style()
    before = [windows[i] for i in range(3)]
    items = windows.__getitems__([0, 1, 2])
    for item in items:
        item["spectrogram"].add_(1000.0)
        item["masks"]["speech"].fill_(True)
        item["label"].fill_(-7)
    assert torch.equal(items[1]["spectrogram"], before[1]["spectrogram"] + 1000.0)  # each edited once
    batch = windows[[0, 1, 2]]
    batch["spectrogram"].mul_(0)
    for i in range(3):
        assert same(windows[i], before[i])


def test_wrong_indices_are_refused_as_a_list_would_refuse_them(run16k):
    windows = SpectrogramDataset(run16k[0]).map_style()
    n = len(windows)
    with pytest.raises(IndexError, match=rf"window {n} out of range: {n} windows"):
        windows[[0, n]]
    with pytest.raises(IndexError, match="non-empty sequence"):
        windows[[]]
    for wrong in ([0.5, 1.0], [[0, 1]], np.array([True, False])):
        with pytest.raises(TypeError, match="window indices must be ints"):
            windows[wrong]
    with pytest.raises(IndexError, match="non-empty sequence"):
        windows["01"]


@pytest.mark.slow
def test_a_batch_sampler_with_two_workers_yields_each_window_once(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=OUTPUTS)
    windows, expected = ds.map_style(), ds.windows()
    sampler = BatchSampler(RandomSampler(windows, generator=torch.Generator().manual_seed(1)), 16, drop_last=False)
    loader = DataLoader(windows, batch_size=None, sampler=sampler, num_workers=2)
    seen = []
    for batch in loader:
        assert batch["spectrogram"].shape[0] == len(batch["key"]) <= 16
        seen += list(zip(batch["key"], batch["start"].tolist()))
    assert sorted(seen) == sorted(expected) and seen != expected


def test_segments_report_starts_in_the_recording(segmented):
    kwargs = dict(window_size_sec=0.4, window_offset_sec=0.1, output_configuration=OUTPUTS)
    expected = iterated(segmented, **kwargs)
    assert max(int(item["start"]) for item in expected) > 203  # windows past the first segment
    assert_all_equal(SpectrogramDataset(segmented, **kwargs), expected)


def test_a_set_without_member_columns_walks_each_shard_once(run16k, tmp_path):
    shards = without_member_columns(run16k[0], tmp_path / "old")
    ds = SpectrogramDataset(str(shards), max_memory_cache=0, **CASES["global_norm"])
    expected = iterated(run16k[0], **CASES["global_norm"])
    order = np.random.default_rng(0).permutation(len(expected))
    for i in order:
        assert same(ds[int(i)], expected[i]), i
    shard_count = len(ds.shards.manifest.shards)
    assert sorted(ds.map_style().walked) == list(range(shard_count))
    assert ds.shard_opens == shard_count  # each shard read whole once, then file by file
    assert ds.map_style().reads > shard_count


def test_out_of_range_and_not_an_integer(run16k):
    ds = SpectrogramDataset(run16k[0])
    n = ds.num_windows()
    for i in (n, -n - 1, 10**12):
        with pytest.raises(IndexError, match=rf"window {i} out of range: {n} windows \(0\.\.{n - 1}, or -{n}\.\.-1"):
            ds[i]
    with pytest.raises(TypeError):
        ds[1.0]
    assert same(ds[np.int64(3)], ds[3]) and same(ds[torch.tensor(3)], ds[3])
    windows = ds.map_style()  # a DataLoader's fetcher asks for a batch at once: the same items, the same refusals
    assert all(same(a, b) for a, b in zip(windows.__getitems__([5, -1, 0, 5]), [ds[5], ds[-1], ds[0], ds[5]]))
    assert windows.__getitems__([]) == []
    with pytest.raises(IndexError, match=rf"window {n} out of range"):
        windows.__getitems__([0, n])
    with pytest.raises(TypeError):
        windows.__getitems__([0, 1.5])


def test_an_empty_subset_has_no_window(run16k):
    with pytest.warns(UserWarning):
        ds = SpectrogramDataset(run16k[0], window_size_sec=60.0)
    assert len(ds.map_style()) == 0
    with pytest.raises(IndexError, match="0 windows"):
        ds[0]


# ---------------------------------------------------------------- the cache


def test_the_cache_stays_within_its_limit_and_keeps_the_last_file(run16k):
    def windows(limit: int) -> Any:
        return SpectrogramDataset(run16k[0], max_memory_cache=limit, **CASES["global_norm"]).map_style()

    big = windows(1 << 30)
    n, files = len(big), int((big.dataset.selection.counts > 0).sum())
    shuffled = np.random.default_rng(1).permutation(n).tolist()
    for i in shuffled:  # everything fits: each file read once
        big[i]
    assert big.reads == files and len(big.cache) == files
    assert big.cache_bytes == sum(f.nbytes for f in big.cache.values())

    none = windows(0)
    for i in range(n):  # in order: each file read once, the file in use kept
        none[i]
        assert len(none.cache) == 1
    assert none.reads == files

    limit = 2 * max(f.nbytes for f in big.cache.values())
    small = windows(limit)
    for i in shuffled:
        small[i]
        assert small.cache_bytes <= limit or len(small.cache) == 1
        assert small.cache_bytes == sum(f.nbytes for f in small.cache.values())
    assert small.reads > files  # files left the cache and were read again


def test_a_pickled_copy_starts_with_an_empty_cache_and_reads_the_same(run16k):
    ds = SpectrogramDataset(run16k[0], max_memory_cache=1 << 30, **CASES["global_norm"])
    windows = ds.map_style()
    first = windows[5]
    copy = pickle.loads(pickle.dumps(windows))
    assert len(windows.cache) == 1 and len(copy.cache) == 0 and copy.reads == 0
    assert same(copy[5], first) and copy.reads == 1


# ---------------------------------------------------------------- what a read checks


def poke(path: Path, at: int) -> None:
    """The lowest bit of one byte flipped in place; the manifest's sha256 is the attacker's to fix."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def poke_value(shards: Shards, name: str, key: str, frame: int) -> None:
    """The mantissa of one stored value of `key` (mel bin 3 at `frame`) changed a little, the manifest's sha256
    recomputed: the shard is whole and its values finite, only the file's own digest can tell."""
    with tarfile.open(shards.folder / name) as tar:
        member = next(m for m in tar.getmembers() if m.name == f"{key}.spec.npy")
        array = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    values = member.offset_data + member.size - array.nbytes
    poke(shards.folder / name, values + (3 * array.shape[1] + frame) * array.itemsize)  # little-endian: low byte
    digest = hashlib.sha256((shards.folder / name).read_bytes()).hexdigest()
    shards.edit_manifest(lambda m: next(s for s in m["shards"] if s["name"] == name).update(sha256=digest))


def test_a_changed_byte_is_caught_by_the_files_digest(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    clean = SpectrogramDataset(run16k[0], verify=False)
    name, key = shard_and_key(clean, 7)
    poke_value(shards, name, key, int(clean[7]["start"]) + 5)
    ds = SpectrogramDataset(str(shards))
    with pytest.raises(ShardError, match=rf"{name}: the bytes of '{key}' disagree with the file index's blake2b"):
        ds[7]
    with pytest.raises(ShardError, match=rf"{name}: the bytes of '{key}' disagree"):
        SpectrogramDataset(str(shards), on_error="warn")[7]  # a map-style item cannot be skipped
    unverified = SpectrogramDataset(str(shards), verify=False)
    assert not same(unverified[7], SpectrogramDataset(run16k[0], verify=False)[7])  # the edit reaches the item


def test_a_shard_without_member_columns_is_checked_whole(run16k, tmp_path):
    shards = without_member_columns(run16k[0], tmp_path / "old")
    poke(shards.folder / "shard-000001.tar", 3000)
    ds = SpectrogramDataset(str(shards), window_content_ratio=0)
    name, _ = shard_and_key(ds, 0)
    assert name == "shard-000000.tar" and ds[0]["key"]  # another shard reads
    i = next(i for i in range(ds.num_windows()) if shard_and_key(ds, i)[0] == "shard-000001.tar")
    with pytest.raises(ShardError, match=r"shard-000001.tar: sha256 .* disagrees with the manifest's"):
        ds[i]


def test_member_places_that_miss_the_file_are_refused(run16k, tmp_path):
    """An index whose member offsets point at the next file (digests and manifest made to agree with it)."""
    shards = Shards(run16k[0], tmp_path / "s")

    def shift(columns: Dict[str, np.ndarray]) -> None:
        for name in ("member.offset", "member.bytes"):
            columns[name][0] = columns[name][1]
        columns["member.blake2b"][:16] = columns["member.blake2b"][16:32]

    edit_columns(shards, shift)
    key = SpectrogramDataset(run16k[0]).shards.index.keys[0]
    for verify in (True, False):
        with pytest.raises(ShardError, match=rf"shard-000000.tar: at byte \d+ the file index places '{key}'"):
            SpectrogramDataset(str(shards), verify=verify, window_content_ratio=0)[0]
    edit_columns(shards, lambda columns: columns["member.bytes"].__setitem__(0, 10**9))
    with pytest.raises(ShardError, match=r"places a file at bytes \d+\.\.\d+ of a shard of \d+ \(edited"):
        SpectrogramDataset(str(shards), window_content_ratio=0)[0]


# ---------------------------------------------------------------- samplers and DataLoader workers


def keys_of(batches: Any) -> List[tuple]:
    return [(k, int(s)) for batch in batches for k, s in zip(batch["key"], batch["start"])]


def test_subset_and_distributed_sampler_cover_the_windows(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=OUTPUTS)
    expected = ds.windows()
    subset = Subset(ds.map_style(), [4, 0, 9])
    assert [(subset[j]["key"], int(subset[j]["start"])) for j in range(3)] == [expected[i] for i in (4, 0, 9)]
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds.map_style(), num_replicas=2, rank=rank, shuffle=True, seed=5)
        seen += keys_of(DataLoader(ds.map_style(), batch_size=16, sampler=sampler))
    padding = -len(expected) % 2  # DistributedSampler repeats windows to give both ranks as many
    assert len(seen) == len(expected) + padding and set(seen) == set(expected)


@pytest.mark.slow
def test_two_workers_with_shuffle_yield_each_window_once_per_epoch(run16k):
    ds = SpectrogramDataset(run16k[0], window_content_ratio=0, output_configuration=OUTPUTS)
    expected = ds.windows()
    loader = DataLoader(ds.map_style(), batch_size=16, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    epochs = [keys_of(loader) for _ in range(2)]
    for seen in epochs:
        assert sorted(seen) == sorted(expected)
    assert epochs[0] != epochs[1] and epochs[0] != expected  # shuffled, and differently each epoch
    batch = next(iter(DataLoader(ds.map_style(), batch_size=4, num_workers=2)))
    reference = [ds[i] for i in range(4)]
    assert torch.equal(batch["spectrogram"], torch.stack([item["spectrogram"] for item in reference]))


@pytest.mark.slow
def test_spawned_workers_read_a_set_without_member_columns(run16k, tmp_path):
    shards = without_member_columns(run16k[0], tmp_path / "old")
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, output_configuration=OUTPUTS)
    loader = DataLoader(ds.map_style(), batch_size=16, shuffle=True, num_workers=2, multiprocessing_context="spawn")
    assert sorted(keys_of(loader)) == sorted(ds.windows())


# ---------------------------------------------------------------- on the S3 test server


def upload(moto: Any, folder: Path, prefix: str) -> str:
    from tests.s3server import BUCKET

    client = moto.client()
    for path in folder.iterdir():
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}/"


@pytest.mark.slow
def test_windows_from_s3_equal_the_iterated_ones(aws, moto, run16k, tmp_path):
    kwargs = CASES["global_norm"]
    expected = iterated(run16k[0], **kwargs)
    picked = [0, 1, 17, len(expected) // 2, len(expected) - 1]
    new = SpectrogramDataset(upload(moto, Path(run16k[0]), "access-new"), **kwargs)
    old = SpectrogramDataset(upload(moto, without_member_columns(run16k[0], tmp_path / "old").folder, "access-old"),
                             **kwargs)
    for i in picked:
        assert same(new[i], expected[i]) and same(old[i], expected[i]), i
    assert new.map_style().walked == {} and new.shard_opens == 0  # range requests only
    assert old.shard_opens == len(old.map_style().walked) > 0


@pytest.mark.slow
def test_a_range_read_from_s3_resumes_within_its_range(aws, moto, run16k):
    from spgdataset import s3, storage
    from tests.storage.test_s3 import FaultProxy

    prefix = upload(moto, Path(run16k[0]), "access-faults")
    name, first, length = "shard-000001.tar", 3072, 70000
    expected = (Path(run16k[0]) / name).read_bytes()[first : first + length]
    proxy = FaultProxy(moto.port, [("cut", 1000), ("reset", 20000), ("slowdown",)])
    aws(endpoint=proxy.endpoint)
    s3.configure(retry_base_delay=0.01)
    try:
        assert storage.at(prefix).read_range(name, first, length) == expected
        end = len((Path(run16k[0]) / name).read_bytes())
        assert storage.at(prefix).read_range(name, end - 100, 1000) == (Path(run16k[0]) / name).read_bytes()[-100:]
    finally:
        proxy.close()
    assert not proxy.faults and proxy.ranged_gets == 5  # 3 faults + the completing request, + the tail
