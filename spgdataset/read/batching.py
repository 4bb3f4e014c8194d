"""Sliding windows out of decoded files, batched with one gather per output.

Why it looks like this (docs/design.md, "Performance shape"): neighbouring 1.92 s windows every 0.1 s share
95% of their frames, so windows are never materialised one by one. Files are taken in chunks of at least
`chunk_windows` windows; each chunk's spectrograms are converted (float16 -> output dtype) and normalised
once into one (n_mels, total_frames) tensor, window starts are shuffled inside the chunk, and each batch
is one `index_select` on a strided view of that tensor, straight into the batch.

Shuffle quality: the windows of one batch are a uniform sample (without replacement) of the windows of
one chunk, i.e. of the files that made the chunk (several files drawn from the file shuffle buffer).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..rules.frames import interval_mask
from .memory import CAN_TELL_UNREFERENCED, ChunkMemory, tensor_nbytes, unreferenced
from .prefetch import read_ahead
from .ring import BatchRing


@dataclasses.dataclass
class FileRecord:
    """One decoded audio file from a shard. `spec` is a read-only (n_mels, T) view of the tar member."""

    key: str
    path: str
    spec: np.ndarray
    intervals: Dict[str, List[List[int]]]
    metadata: Dict[str, Any]
    starts: np.ndarray  # kept window starts, frames
    label: int = -1
    audio: Optional[np.ndarray] = None  # float32 samples at the feature rate
    offset: int = 0  # a segment of a long file: its first frame in the file (items report starts in the file)

    @property
    def frames(self) -> int:
        return int(self.spec.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.spec.nbytes + (self.audio.nbytes if self.audio is not None else 0))


@dataclasses.dataclass
class WindowSpec:
    """What each window carries and how it is shaped. Units: frames unless said otherwise."""

    window: int
    hop_length: int
    n_mels: int
    spectrogram: bool = True
    audio: bool = False
    masks: Sequence[str] = ()
    valid_mask: bool = False  # add masks["valid"]: False on padding of files shorter than a window
    meta: Sequence[str] = ()
    label: bool = False
    dtype: torch.dtype = torch.float32
    mean: Optional[torch.Tensor] = None  # (n_mels,) global normalisation
    std: Optional[torch.Tensor] = None
    per_window_norm: bool = False
    pad_value: float = 0.0  # log-mel of silence, used for padding before normalisation


class Chunk:
    """Several files laid end to end in one tensor, plus the references of their windows."""

    def __init__(self, files: List[FileRecord], spec: WindowSpec, memory: Optional[ChunkMemory] = None) -> None:
        self.files, self.spec = files, spec
        self.memory = memory or ChunkMemory(keep=0)
        W = spec.window
        lengths = np.array([max(f.frames, W) for f in files], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self.total = int(lengths.sum())
        counts = np.array([len(f.starts) for f in files], dtype=np.int64)
        self.file_of = np.repeat(np.arange(len(files)), counts)
        self.local_start = np.concatenate([f.starts for f in files]) if files else np.zeros(0, np.int64)
        self.file_start = np.concatenate([f.starts + f.offset for f in files]) if files else np.zeros(0, np.int64)
        self.global_start = torch.from_numpy(self.local_start + offsets[self.file_of])
        self.count = int(counts.sum())
        self.data = self._spectrograms(offsets, lengths) if spec.spectrogram else None
        self.masks = {name: self._mask(offsets, name) for name in spec.masks}
        if spec.valid_mask:
            valid = np.zeros(self.total, dtype=bool)
            for f, off in zip(files, offsets):
                valid[off : off + f.frames] = True
            self.masks["valid"] = torch.from_numpy(valid)
        self.audio = self._audio(offsets) if spec.audio else None
        self.labels = torch.tensor([f.label for f in files], dtype=torch.int64)

    def _spectrograms(self, offsets: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """The chunk's frames in one tensor of the output dtype, normalised once here, not per window.

        Converting float16 -> float32 per frame here (once) rather than per window in each batch
        (about 19 times) leaves the batch a single gather; tools/bench.py measures both.
        """
        spec = self.spec
        normalise = spec.mean is not None
        hold = torch.float32 if normalise or spec.per_window_norm or spec.dtype == torch.bfloat16 else spec.dtype
        data = self.memory.empty((spec.n_mels, self.total), hold)
        with warnings.catch_warnings():  # views of immutable tar bytes: read-only is fine, we only read
            warnings.simplefilter("ignore", UserWarning)
            for f, off, length in zip(self.files, offsets, lengths):
                data[:, off : off + f.frames].copy_(torch.from_numpy(f.spec))
                if length > f.frames:
                    data[:, off + f.frames : off + length].fill_(spec.pad_value)
        if normalise:
            data.sub_(spec.mean[:, None]).div_(spec.std[:, None])
        return data

    def _mask(self, offsets: np.ndarray, name: str) -> torch.Tensor:
        mask = np.zeros(self.total, dtype=bool)
        for f, off in zip(self.files, offsets):
            spans = f.intervals.get(name)
            if spans:
                mask[off : off + f.frames] = interval_mask(spans, f.frames, self.spec.hop_length)
        return torch.from_numpy(mask)

    def _audio(self, offsets: np.ndarray) -> torch.Tensor:
        hop = self.spec.hop_length
        audio = np.zeros((self.total + 1) * hop, dtype=np.float32)
        for f, off in zip(self.files, offsets):
            samples = f.audio[: (f.frames + 1) * hop]
            audio[off * hop : off * hop + len(samples)] = samples
        return torch.from_numpy(audio)

    def arrange(self, order: np.ndarray) -> None:
        """Put the windows in `order` (a permutation of 0..count-1); take() then slices it.

        Everything per-window that is not a gather (starts, file ids, keys, paths, labels, meta) is permuted
        here once per chunk, so a batch costs a few slices plus one index_select per tensor output.
        """
        files = self.file_of[order]
        self._starts = self.global_start[torch.from_numpy(order)]
        self._local = torch.from_numpy(self.file_start[order])  # the start in the recording, as items report it
        self._labels = self.labels[torch.from_numpy(files)]
        picked = files.tolist()
        self._keys = [self.files[i].key for i in picked]
        self._paths = [self.files[i].path for i in picked]
        self._meta = {k: [self.files[i].metadata.get(k) for i in files.tolist()] for k in self.spec.meta}

    def take(self, lo: int, hi: int, outputs: OutputTensors) -> Dict[str, Any]:
        """Windows lo..hi of the arranged order, as one batch dict."""
        spec, W = self.spec, self.spec.window
        starts = self._starts[lo:hi]
        batch: Dict[str, Any] = {}
        if self.data is not None:
            view = self.data.as_strided((self.total - W + 1, spec.n_mels, W), (1, self.total, 1))
            x = torch.index_select(view, 0, starts, out=outputs.empty((len(starts), spec.n_mels, W), self.data.dtype))
            if spec.per_window_norm:
                mean = x.mean(dim=(1, 2), keepdim=True)
                std = x.std(dim=(1, 2), keepdim=True)
                x = (x - mean) / (std + 1e-5)
            batch["spectrogram"] = x.to(spec.dtype)
        if self.audio is not None:
            n = W * spec.hop_length
            view = self.audio.as_strided((len(self.audio) - n + 1, n), (1, 1))
            batch["audio"] = torch.index_select(view, 0, starts * spec.hop_length,
                                                out=outputs.empty((len(starts), n), torch.float32))
        if self.masks:
            batch["masks"] = {
                name: torch.index_select(m.as_strided((self.total - W + 1, W), (1, 1)), 0, starts)
                for name, m in self.masks.items()
            }
        if spec.label:
            batch["label"] = self._labels[lo:hi].clone()
        if spec.meta:
            batch["meta"] = {k: values[lo:hi] for k, values in self._meta.items()}
        batch["key"] = self._keys[lo:hi]
        batch["path"] = self._paths[lo:hi]
        batch["start"] = self._local[lo:hi].clone()
        return batch


class OutputTensors:
    """Where batch tensors are allocated.

    In a DataLoader worker: a free slot of the loader's BatchRing (ring.py), which the training process
    gives back only once it holds no reference to the batch; without one, a fresh tensor in shared memory
    (the DataLoader moves every tensor a worker returns into shared memory, which copies it; one already
    there crosses as a handle).

    In the training process: a fresh 3.9 MB tensor per batch costs about as much in page faults as the
    gather itself (tools/bench.py), so a batch's memory is reused, but only once nothing references it
    any more (no tensor, view or slice of it alive: the storage's use count says so). A consumer that
    keeps batches simply gets new memory. Reuse is never a guess.
    """

    def __init__(self, reuse: bool, shared: bool = False, ring: Optional[BatchRing] = None, ring_worker: int = 0,
                 keep: int = 12) -> None:
        self.ring, self.ring_worker = ring, ring_worker  # in a worker: its slots of the loader's shared batches
        self.shared = shared  # in a worker: allocate in shared memory (the DataLoader would copy it there)
        self.reuse = reuse and CAN_TELL_UNREFERENCED
        self.keep = keep
        self.storages: List[Any] = []
        self.lock = threading.Lock()  # batch-building threads share one pool

    def empty(self, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if not self.reuse:
            if not self.shared:
                return torch.empty(shape, dtype=dtype)
            slot = self.ring.claim(self.ring_worker, shape, dtype) if self.ring is not None else None
            return slot if slot is not None else torch.empty(shape, dtype=dtype).share_memory_()
        nbytes = tensor_nbytes(shape, dtype)
        with self.lock:
            for storage in self.storages:
                if storage.nbytes() == nbytes and unreferenced(storage):
                    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
            out = torch.empty(shape, dtype=dtype)
            if len(self.storages) < self.keep:
                self.storages.append(out.untyped_storage())
            return out


def concat_batches(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One batch out of parts with the same keys, every tensor in memory of its own (a DataLoader worker then
    sends only the batch, not the larger batch a part was cut from)."""
    if len(parts) == 1:
        return _owned(parts[0])
    out: Dict[str, Any] = {}
    for name, value in parts[0].items():
        values = [p[name] for p in parts]
        if isinstance(value, torch.Tensor):
            out[name] = torch.cat(values)
        elif isinstance(value, dict):
            out[name] = concat_batches(values)
        else:
            out[name] = [x for v in values for x in v]
    return out


def _owned(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


def batch_size_of(batch: Dict[str, Any]) -> int:
    return len(batch["key"])


def batch_rows(batch: Dict[str, Any], lo: int, hi: int) -> Dict[str, Any]:
    """Windows lo..hi of a batch (views); the batch itself when that is all of it."""
    if lo == 0 and hi == batch_size_of(batch):
        return batch

    def cut(value: Any) -> Any:
        return {k: cut(v) for k, v in value.items()} if isinstance(value, dict) else value[lo:hi]

    return {name: cut(value) for name, value in batch.items()}


def split_batch(batch: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Per-window dicts (own memory, so a DataLoader can collate and send them safely)."""
    def pick(value: Any, i: int) -> Any:
        if isinstance(value, torch.Tensor):
            return value[i].clone()
        if isinstance(value, dict):
            return {k: pick(v, i) for k, v in value.items()}
        return value[i]

    for i in range(batch_size_of(batch)):
        yield {name: pick(value, i) for name, value in batch.items()}


def iterate_windows(
    files: Iterator[FileRecord],
    spec: WindowSpec,
    chunk_windows: int,
    batch_size: Optional[int],
    drop_last: bool = False,
    rng: Optional[np.random.Generator] = None,
    skip_windows: int = 0,
    threads: int = 1,
    in_worker: bool = False,
    ring: Optional[BatchRing] = None,
    ring_worker: int = 0,
    memory: Optional[ChunkMemory] = None,
) -> Iterator[Dict[str, Any]]:
    """Windows of `files` as batches of `batch_size` (or single windows when None), shuffled when `rng`.

    `skip_windows`: leave out the first windows of the stream exactly as an earlier run yielded them
    (same files, same permutations), without building them: how a resumed epoch continues.
    `threads`: batches of a chunk built by this many threads at once (in order; torch copies release the
    GIL). Independent single-threaded copies, unlike intra-op threads, do not stall each other when
    another process holds a core.
    `in_worker`: batches go to another process (shared memory; `ring`'s slots of worker `ring_worker`); else
    their memory is reused once released (OutputTensors).
    `memory`: where chunks live (memory.py); pass one that outlives the call to reuse it across epochs.
    """
    size = batch_size or 256
    carry: Optional[Dict[str, Any]] = None
    outputs = OutputTensors(not in_worker and batch_size is not None, in_worker, ring, ring_worker)
    fresh = OutputTensors(False, in_worker)  # partial batches get concatenated: no point in reusing them
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) if threads > 1 else None
    chunks = _arranged_chunks(files, spec, chunk_windows, rng, skip_windows, memory or ChunkMemory())
    if pool is not None:  # the next chunk is built while the pool gathers the batches of this one
        chunks = read_ahead(one_thread(chunks), depth=1)
    try:
        for chunk, pos in chunks:
            ranges = []
            if carry is not None:
                ranges.append((pos, min(pos + size - batch_size_of(carry), chunk.count)))
                pos = ranges[-1][1]
            ranges += [(lo, min(lo + size, chunk.count)) for lo in range(pos, chunk.count, size)]

            def take(bounds: Tuple[int, int], chunk: Chunk = chunk) -> Dict[str, Any]:
                lo, hi = bounds
                return chunk.take(lo, hi, outputs if hi - lo == size else fresh)

            for batch in _in_order(take, ranges, pool, depth=2 * threads):
                if carry is not None:
                    batch, carry = concat_batches([carry, batch]), None
                if batch_size_of(batch) < size:
                    carry = batch
                else:
                    yield from _emit(batch, batch_size)
        if carry is not None and (batch_size is None or not drop_last):
            yield from _emit(carry, batch_size)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _arranged_chunks(files: Iterator[FileRecord], spec: WindowSpec, chunk_windows: int,
                     rng: Optional[np.random.Generator], skip_windows: int,
                     memory: ChunkMemory) -> Iterator[Tuple[Chunk, int]]:
    """(chunk in its shuffled order, first window to emit): whole chunks skipped are never built."""
    for group in _file_groups(files, chunk_windows):
        count = sum(len(f.starts) for f in group)
        order = rng.permutation(count) if rng is not None else np.arange(count)
        if skip_windows >= count:
            skip_windows -= count
            continue
        chunk = Chunk(group, spec, memory)
        chunk.arrange(order)
        yield chunk, skip_windows
        skip_windows = 0


def one_thread(items: Iterator[Any]) -> Iterator[Any]:
    """Run `items` with one torch thread, in the thread that runs this generator only.

    The copies are memory-bound: intra-op threads add only synchronisation, and stall when another busy
    thread or process holds a core (tools/bench.py). torch.set_num_threads in a non-main thread sets that
    thread's OpenMP team size, leaving the training thread's untouched.
    """
    torch.set_num_threads(1)
    yield from items


def _in_order(fn: Any, args: List[Any], pool: Optional[ThreadPoolExecutor], depth: int) -> Iterator[Any]:
    """map(fn, args) on `pool` with at most `depth` results in flight, yielded in order."""
    if pool is None:
        for arg in args:
            yield fn(arg)
        return
    pending: Deque[Future] = deque()
    for arg in args:
        pending.append(pool.submit(fn, arg))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _emit(batch: Dict[str, Any], batch_size: Optional[int]) -> Iterator[Dict[str, Any]]:
    if batch_size is None:
        yield from split_batch(batch)
    else:
        yield batch


def _file_groups(files: Iterator[FileRecord], chunk_windows: int) -> Iterator[List[FileRecord]]:
    """Consecutive files holding at least `chunk_windows` windows (the last group may hold fewer)."""
    pending: List[FileRecord] = []
    windows = 0
    for record in files:
        if len(record.starts) == 0:
            continue
        pending.append(record)
        windows += len(record.starts)
        if windows >= chunk_windows:
            yield pending
            pending, windows = [], 0
    if pending:
        yield pending
