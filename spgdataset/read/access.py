"""Random access: window i of a dataset, and its windows as a map-style torch Dataset.

Window i (0 <= i < num_windows()) is the i-th window of an epoch read with shuffle=False by one process of a
world of one: the subset's files in selection order (selection.py), each file's kept starts in order. It is
found from the cumulative window counts (one searchsorted), and only its file is read: the byte range of the
file's tar members, which the index holds (format/index.py, `member.*`), in one pread or one range request,
checked against the index's blake2b of those bytes (with `verify`), then decoded and checked against the
manifest and the index as the streaming reader checks every file (decode.py: ShardReader.decode_file).

A set written before those columns has each shard walked once per process instead: read whole, checked as
the streaming reader checks a shard (size, sha256 once per process for a local file), and the place and
blake2b of each of its files noted. Decoded files are kept converted and normalised (a chunks.Chunk of one
file) within `max_memory_cache` bytes per process, the least recently used leaving first; with 0 only the
file last used stays, so that neighbouring windows of one file read it once. A DataLoader worker keeps its
own. A corrupt file is a ShardError here also with on_error="warn": a map-style item cannot be skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import operator
import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset
from webdataset.tariterators import base_plus_ext

from ..errors import ShardError, first_line
from ..format.index import DIGEST_BYTES
from ..format.manifest import ShardEntry
from ..format.tar import tar_walk
from .chunks import Chunk, per_window_normalised
from .memory import ChunkMemory
from .decode import blake2b
from .records import WindowSpec

if TYPE_CHECKING:
    from .dataset import SpectrogramDataset

Places = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]  # first header byte, bytes, blake2b (or None)


class PlainMemory(ChunkMemory):
    """A one-file chunk's tensors at their own size: huge-page buffers (2 MB each) would multiply what a cache
    of small files holds beyond what it counts."""

    def empty(self, shape: Any, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(tuple(int(n) for n in shape), dtype=dtype)


@dataclasses.dataclass
class LoadedFile:
    """One file ready to cut windows from: what a chunk of that file alone holds (converted to the output dtype,
    normalised and padded once; the spectrogram transposed), and what its items name."""

    key: str
    path: str
    metadata: Dict[str, Any]
    starts: np.ndarray  # kept window starts, frames
    offset: int  # a segment's first frame in its recording
    label: int
    frames: Optional[np.ndarray]  # the spectrogram frame by frame, (frames, n_mels): a window is one block
    masks: Dict[str, np.ndarray]  # numpy: a window's copy costs a third of torch's
    audio: Optional[torch.Tensor]
    frame_labels: Optional[np.ndarray] = None  # int64, 0 on the padding of a short file

    @property
    def nbytes(self) -> int:
        arrays = [self.starts, *self.masks.values()] + [a for a in (self.frames, self.frame_labels) if a is not None]
        return sum(int(a.nbytes) for a in arrays) + (0 if self.audio is None else self.audio.untyped_storage().nbytes())


def gather(picks: Sequence[Tuple[LoadedFile, int]], spec: WindowSpec) -> Dict[str, Any]:
    """Window j of each (file, j), as one batch dict laid out as a streaming batch (chunks.Chunk.take), with
    the same values: each array gathered for all picks at once into one new tensor."""
    files = [loaded for loaded, _ in picks]
    starts = [int(loaded.starts[j]) for loaded, j in picks]
    batch: Dict[str, Any] = {}
    if spec.spectrogram:
        batch["spectrogram"] = spectrograms([f.frames for f in files if f.frames is not None], starts, spec)
    if spec.audio:
        hop, width = spec.hop_length, spec.window * spec.hop_length
        batch["audio"] = torch.stack([f.audio[start * hop : start * hop + width]
                                      for f, start in zip(files, starts) if f.audio is not None])
    names = list(files[0].masks) if files else []  # the spec's masks, and "valid" if asked for
    if names:
        batch["masks"] = {name: torch.from_numpy(np.stack([f.masks[name][start : start + spec.window]
                                                           for f, start in zip(files, starts)])) for name in names}
    if spec.frame_labels:
        labels = [f.frame_labels for f in files if f.frame_labels is not None]
        batch["frame_labels"] = torch.from_numpy(np.stack([row[start : start + spec.window]
                                                           for row, start in zip(labels, starts)]))
    if spec.label:
        batch["label"] = torch.tensor([f.label for f in files], dtype=torch.int64)
    if spec.meta:
        batch["meta"] = {key: [f.metadata.get(key) for f in files] for key in spec.meta}
    batch["key"], batch["path"] = [f.key for f in files], [f.path for f in files]
    batch["start"] = torch.tensor([start + f.offset for f, start in zip(files, starts)], dtype=torch.int64)
    return batch


def spectrograms(frames: List[np.ndarray], starts: List[int], spec: WindowSpec) -> torch.Tensor:
    """The windows at `starts` of each file's (frames, n_mels) array, as one (windows, n_mels, window) tensor:
    a transposing copy into each row."""
    block = np.empty((len(frames), spec.n_mels, spec.window), dtype=frames[0].dtype if frames else np.float32)
    for k, (array, start) in enumerate(zip(frames, starts)):
        block[k] = array[start : start + spec.window].T
    x = torch.from_numpy(block)
    if spec.per_window_norm:  # as a batch, so that the sums run as the streaming batch's do
        x = per_window_normalised(x)
    return x if x.dtype == spec.dtype else x.to(spec.dtype)


def windows_of(batch: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A gathered batch as per-window dicts (batches.split_batch's layout), each tensor a row of the batch's:
    no copy, and no item shares memory with the cache or with another item. One copy per window in all, half
    the cost of a copy per window that a DataLoader's collate then stacks again."""
    columns: Dict[str, Sequence[Any]] = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor):
            columns[name] = torch.unbind(value)
        elif name == "masks":
            rows = {mask: torch.unbind(tensor) for mask, tensor in value.items()}
            columns[name] = [dict(zip(rows, row)) for row in zip(*rows.values())]
        elif name == "meta":
            columns[name] = [dict(zip(value, row)) for row in zip(*value.values())]
        else:
            columns[name] = value
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def sample_runs(data: bytes, url: str) -> Iterator[Tuple[str, int, int]]:
    """(key, first header byte, byte after its last member) of each run of members with one sample key, in tar
    order (webdataset's grouping); ShardError when the tar is not whole."""
    run: Optional[List[Any]] = None
    try:
        for name, start, _, end in tar_walk(memoryview(data)):
            key = base_plus_ext(name)[0]
            if key is not None and run is not None and key == run[0]:
                run[2] = end
            elif key is not None:
                if run is not None:
                    yield run[0], run[1], run[2]
                run = [key, start - 512, end]
    except ValueError as exc:
        raise ShardError(f"{url}: truncated or corrupt shard: {first_line(exc)}") from None
    if run is not None:
        yield run[0], run[1], run[2]


class WindowDataset(Dataset):
    """The windows of a SpectrogramDataset's subset as a map-style Dataset: `len()` is `num_windows()`, item i
    the i-th window of an unshuffled epoch (negative i counts from the end, as in a list). For any sampler:
    `DataLoader(ds.map_style(), shuffle=True, num_workers=N)`, DistributedSampler, Subset."""

    def __init__(self, dataset: "SpectrogramDataset", spec: WindowSpec) -> None:
        """`spec`: what each window carries (the dataset's own, so that items are the iterated ones)."""
        self.dataset, self.spec = dataset, spec
        self.files, self.counts = dataset.selection.files, dataset.selection.counts
        self.ends = np.cumsum(self.counts)  # windows up to and including each file of the subset
        self.total, self.limit = int(self.ends[-1]) if len(self.ends) else 0, dataset.config.reading.max_memory_cache
        self._start()

    def _start(self) -> None:
        """This process's state: a forked or spawned worker starts its own."""
        self.pid = os.getpid()
        self.cache: "collections.OrderedDict[int, LoadedFile]" = collections.OrderedDict()  # position -> file
        self.cache_bytes = 0
        self.walked: Dict[int, Places] = {}  # shard -> its files' places, for a set without member columns
        self.reads = 0  # files read by this process

    def __getstate__(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in ("dataset", "spec", "files", "counts", "ends", "total", "limit")}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start()

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: Any) -> Dict[str, Any]:
        """Window i (an int; negative counts from the end), or, for a sequence of ints, those windows as one
        batch laid out as a streaming batch: with `DataLoader(windows, batch_size=None,
        sampler=BatchSampler(RandomSampler(windows), 64, drop_last=False))` each batch is gathered with one
        copy per window and no collate (docs/dataset.md, "Random access")."""
        if isinstance(i, (np.ndarray, torch.Tensor)) and i.ndim == 0 or not isinstance(i, (Sequence, np.ndarray,
                                                                                              torch.Tensor)):
            return windows_of(gather(self.picks([operator.index(i)]), self.spec))[0]
        if isinstance(i, (str, bytes)) or not len(i):
            raise IndexError(f"window indices must be an int or a non-empty sequence of ints, got {i!r}")
        return gather(self.picks(i), self.spec)

    def __getitems__(self, indices: Sequence[Any]) -> List[Dict[str, Any]]:
        """Windows `indices` as the per-window dicts a DataLoader's fetcher asks for and then collates: all
        found with one searchsorted and gathered together (windows_of)."""
        return windows_of(gather(self.picks(indices), self.spec)) if len(indices) else []

    def picks(self, indices: Any) -> List[Tuple[LoadedFile, int]]:
        """(file, window of the file) for each index of a 1-d sequence of ints: IndexError beyond the range,
        TypeError for other values (as a list's indexing)."""
        at, n = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices), self.total
        if at.ndim != 1 or at.dtype.kind not in "iu":
            raise TypeError(f"window indices must be ints or a 1-d sequence of ints, got {at.dtype} values of "
                            f"shape {at.shape}")
        wrong = at[(at < -n) | (at >= n)]
        if wrong.size:
            raise IndexError(f"window {int(wrong[0])} out of range: {n} windows (0..{n - 1}, or -{n}..-1 from "
                             "the end)")
        at = np.where(at < 0, at + n, at)
        js = self.ends.searchsorted(at, side="right")
        within = (at - self.ends[js] + self.counts[js]).tolist()
        return [(self.file(f), k) for f, k in zip(self.files[js].tolist(), within)]

    def file(self, position: int) -> LoadedFile:
        """The file at index `position`: from this process's cache, else read and kept there (the least recently
        used files leave until the cache is within its limit; the file just read always stays)."""
        if self.pid != os.getpid():
            self._start()
        found = self.cache.get(position)
        if found is not None:
            self.cache.move_to_end(position)
            return found
        loaded = self.load(position)
        self.cache[position] = loaded
        self.cache_bytes += loaded.nbytes
        while len(self.cache) > 1 and self.cache_bytes > self.limit:
            self.cache_bytes -= self.cache.popitem(last=False)[1].nbytes
        return loaded

    def load(self, position: int) -> LoadedFile:
        """Read, check and decode the file at index `position` alone (see the module docstring)."""
        shards, reader = self.dataset.shards, self.dataset.reader
        k = int(shards.index.shard[position])
        record = reader.read_alone(k, position, self.place(k, shards.manifest.shards[k], position))
        self.reads += 1
        chunk = Chunk([record], self.spec, PlainMemory(keep=0))
        frames = None if chunk.data is None else np.ascontiguousarray(chunk.data.numpy().T)
        return LoadedFile(record.key, record.path, record.metadata, record.starts, record.offset, record.label,
                          frames, {name: mask.numpy() for name, mask in chunk.masks.items()}, chunk.audio,
                          None if chunk.frame_labels is None else chunk.frame_labels.numpy())

    def place(self, k: int, shard: ShardEntry, position: int) -> Tuple[int, int, Optional[bytes]]:
        """(first header byte, bytes, blake2b or None) of the members of the file at `position` in shard k: from
        the index's columns, else from a walk of the shard."""
        if self.dataset.shards.index.members is not None:
            return self.dataset.reader.member_place(k, position)
        lo = int(self.dataset.reader.bounds[k])
        offsets, sizes, digests = self.walked[k] if k in self.walked else self.walk(k, shard)
        return self.dataset.reader.checked_place(k, int(offsets[position - lo]), int(sizes[position - lo]),
                                                 None if digests is None else digests[position - lo].tobytes())

    def walk(self, k: int, shard: ShardEntry) -> Places:
        """Where each file of shard k lies and (with `verify`) its blake2b, for a set written without them: the
        shard read whole once per process and checked as the streaming reader checks it (decode.py)."""
        shards, reader = self.dataset.shards, self.dataset.reader
        url, lo, hi = shards.url(shard), int(reader.bounds[k]), int(reader.bounds[k + 1])
        positions = {key: i for i, key in enumerate(shards.index.keys.slice(lo, hi))}
        data, _ = reader.shard_bytes(url, shard)
        offsets, sizes = np.full(hi - lo, -1, dtype=np.int64), np.zeros(hi - lo, dtype=np.int64)
        digests = np.zeros((hi - lo, DIGEST_BYTES), dtype=np.uint8) if reader.verify else None
        view = memoryview(data)
        for key, first, end in sample_runs(data, url):
            i = positions.get(key)
            if i is None or offsets[i] >= 0:
                raise ShardError(f"{url}: holds {key!r}, which the file index does not list for it (or twice)")
            offsets[i], sizes[i] = first, end - first
            if digests is not None:
                digests[i] = np.frombuffer(blake2b(view[first:end]), dtype=np.uint8)
        if (offsets < 0).any() or len(positions) != hi - lo:
            raise ShardError(f"{url}: holds {int((offsets >= 0).sum())} files, the file index lists {hi - lo} "
                             "(truncated or replaced shard, or a key listed twice)")
        self.walked[k] = (offsets, sizes, digests)
        return self.walked[k]
