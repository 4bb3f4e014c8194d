"""Chunks: several decoded files laid end to end in one tensor, their windows arranged in a shuffled order.

Why (docs/design.md, "Performance shape"): neighbouring 1.92 s windows every 0.1 s share 95% of their frames,
so windows are never materialised one by one. Each chunk's spectrograms are converted (float16 -> output
dtype) and normalised once, window starts are shuffled inside the chunk, and each batch is one `index_select`
on a strided view of that tensor, straight into the batch's memory (transport.py: OutputTensors).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..rules.frames import interval_mask
from .memory import ChunkMemory
from .records import FileRecord, WindowSpec
from .stages import ChunkInput
from .transport import OutputTensors


class Chunk:
    """Several files laid end to end in one tensor, plus the references of their windows.

    It keeps the files' keys, paths and metadata, not the files: their spectrograms are views of the shards'
    bytes, which are released (and their buffers reused, decode.read_reusing) once the chunk is built."""

    def __init__(self, files: List[FileRecord], spec: WindowSpec, memory: Optional[ChunkMemory] = None) -> None:
        self.spec = spec
        self.keys, self.paths = [f.key for f in files], [f.path for f in files]
        self.metadata = [f.metadata for f in files]
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
        self.data = self._spectrograms(files, offsets, lengths) if spec.spectrogram else None
        self.masks = {name: self._mask(files, offsets, name) for name in spec.masks}
        if spec.valid_mask:
            valid = np.zeros(self.total, dtype=bool)
            for f, off in zip(files, offsets):
                valid[off : off + f.frames] = True
            self.masks["valid"] = torch.from_numpy(valid)
        self.audio = self._audio(files, offsets) if spec.audio else None
        self.frame_labels = self._frame_labels(files, offsets) if spec.frame_labels else None
        self.labels = torch.tensor([f.label for f in files], dtype=torch.int64)
        self.views: Dict[str, torch.Tensor] = {}  # strided(), made once per tensor

    def _spectrograms(self, files: List[FileRecord], offsets: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
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
            for f, off, length in zip(files, offsets, lengths):
                data[:, off : off + f.frames].copy_(torch.from_numpy(f.spec))
                if length > f.frames:
                    data[:, off + f.frames : off + length].fill_(spec.pad_value)
        if spec.mean is not None and spec.std is not None:
            data.sub_(spec.mean[:, None]).div_(spec.std[:, None])
        return data

    def _mask(self, files: List[FileRecord], offsets: np.ndarray, name: str) -> torch.Tensor:
        mask = np.zeros(self.total, dtype=bool)
        for f, off in zip(files, offsets):
            spans = f.intervals.get(name)
            if spans:
                mask[off : off + f.frames] = interval_mask(spans, f.frames, self.spec.hop_length)
        return torch.from_numpy(mask)

    def _frame_labels(self, files: List[FileRecord], offsets: np.ndarray) -> torch.Tensor:
        """The files' frame labels end to end (int64), 0 on the padding of a short file, as masks are False there."""
        labels = np.zeros(self.total, dtype=np.int64)
        for f, off in zip(files, offsets):
            if f.frame_labels is None:
                raise ValueError(f"{f.path}: decoded without its frame labels")
            labels[off : off + f.frames] = f.frame_labels
        return torch.from_numpy(labels)

    def _audio(self, files: List[FileRecord], offsets: np.ndarray) -> torch.Tensor:
        hop = self.spec.hop_length
        audio = np.zeros((self.total + 1) * hop, dtype=np.float32)
        for f, off in zip(files, offsets):
            if f.audio is None:
                raise ValueError(f"{f.path}: decoded without its audio")
            samples = f.audio[: (f.frames + 1) * hop]
            audio[off * hop : off * hop + len(samples)] = samples
        return torch.from_numpy(audio)

    def arrange(self, order: np.ndarray) -> None:
        """Put the windows in `order` (a permutation of 0..count-1); take() then slices it.

        Everything per-window that is not a gather (starts, file ids, keys, paths, labels, meta) is permuted
        here once per chunk, so a batch costs a few slices plus one index_select per tensor output.
        """
        files = self.file_of[order]
        self.window_starts = self.global_start[torch.from_numpy(order)]
        self.window_local = torch.from_numpy(self.file_start[order])  # the start in the recording, as items report it
        self.window_labels = self.labels[torch.from_numpy(files)]
        picked = files.tolist()
        self.window_keys = [self.keys[i] for i in picked]
        self.window_paths = [self.paths[i] for i in picked]
        self.window_meta = {k: [self.metadata[i].get(k) for i in picked] for k in self.spec.meta}

    def take(self, lo: int, hi: int, outputs: OutputTensors) -> Dict[str, Any]:
        """Windows lo..hi of the arranged order, as one batch dict."""
        return take_parts([(self, lo, hi)], outputs)

    def relabel(self, lookup: torch.Tensor, frames: bool = False) -> None:
        """Move the windows' labels (`frames`: the frame labels) into another vocabulary, `lookup[label]` (a
        router's merged one): once per chunk, not per batch. Call before the chunk is gathered from."""
        if frames:
            assert self.frame_labels is not None
            self.frame_labels = lookup[self.frame_labels]
        else:
            self.window_labels = lookup[self.window_labels]
        self.views.clear()

    def strided(self, name: str) -> torch.Tensor:
        """Every window of tensor `name` as a view (windows, ...) on the chunk's frames: what a gather reads."""
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = self._strided(name)
        return view

    def _strided(self, name: str) -> torch.Tensor:
        W, spec = self.spec.window, self.spec
        if name == "spectrogram":
            assert self.data is not None
            return self.data.as_strided((self.total - W + 1, spec.n_mels, W), (1, self.total, 1))
        if name == "audio":
            assert self.audio is not None
            n = W * spec.hop_length
            return self.audio.as_strided((len(self.audio) - n + 1, n), (1, 1))
        frames = self.frame_labels if name == "frame_labels" else self.masks[name]
        assert frames is not None
        return frames.as_strided((self.total - W + 1, W), (1, 1))


Part = Tuple[Chunk, int, int]  # windows lo..hi of a chunk's arranged order


def take_parts(parts: Sequence[Part], outputs: OutputTensors) -> Dict[str, Any]:
    """Windows of several chunks (the router's datasets) as one batch dict, each tensor gathered straight into
    its rows of the batch: one copy per window, as for a dataset's own batch."""
    first, n = parts[0][0], sum(hi - lo for _, lo, hi in parts)
    spec = first.spec
    batch: Dict[str, Any] = {}
    if first.data is not None:
        x = _gathered(parts, "spectrogram", lambda c: c.window_starts, outputs, n)
        if spec.per_window_norm:
            x = per_window_normalised(x)
        batch["spectrogram"] = x.to(spec.dtype)
    if first.audio is not None:
        batch["audio"] = _gathered(parts, "audio", lambda c: c.window_starts * spec.hop_length, outputs, n)
    if first.masks:
        batch["masks"] = {name: _gathered(parts, name, lambda c: c.window_starts, None, n) for name in first.masks}
    if first.frame_labels is not None:
        batch["frame_labels"] = _gathered(parts, "frame_labels", lambda c: c.window_starts, None, n)
    if spec.label:
        batch["label"] = torch.cat([c.window_labels[lo:hi] for c, lo, hi in parts])
    if spec.meta:
        batch["meta"] = {k: [v for c, lo, hi in parts for v in c.window_meta[k][lo:hi]] for k in first.window_meta}
    batch["key"] = [k for c, lo, hi in parts for k in c.window_keys[lo:hi]]
    batch["path"] = [p for c, lo, hi in parts for p in c.window_paths[lo:hi]]
    batch["start"] = torch.cat([c.window_local[lo:hi] for c, lo, hi in parts])
    return batch


def _gathered(parts: Sequence[Part], name: str, starts: Callable[[Chunk], torch.Tensor],
              outputs: Optional[OutputTensors], n: int) -> torch.Tensor:
    """Tensor `name` of every part's windows, gathered into one new (n, ...) tensor (from `outputs` if given)."""
    views = [c.strided(name) for c, _, _ in parts]
    shape, dtype = (n, *views[0].shape[1:]), views[0].dtype
    if any(v.dtype != dtype for v in views):  # datasets that hold their frames in different dtypes
        dtype = torch.float32
    out = outputs.empty(shape, dtype) if outputs is not None else torch.empty(shape, dtype=dtype)
    at = 0
    for view, (chunk, lo, hi) in zip(views, parts):
        rows = out[at : at + hi - lo]
        if view.dtype == dtype:
            torch.index_select(view, 0, starts(chunk)[lo:hi], out=rows)
        else:
            rows.copy_(torch.index_select(view, 0, starts(chunk)[lo:hi]))
        at += hi - lo
    return out


class ChunkTaker:
    """Any number of windows at a time out of a stream of chunks, as (chunk, lo, hi) parts."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self.chunks, self.pos = chunks, 0
        self.chunk: Optional[Chunk] = None

    def take(self, n: int) -> List[Part]:
        """Parts totalling n windows (fewer only when the stream ends)."""
        parts: List[Part] = []
        while n > 0:
            if self.chunk is None or self.pos >= self.chunk.count:
                self.chunk, self.pos = next(self.chunks, None), 0
                if self.chunk is None:
                    break
            m = min(n, self.chunk.count - self.pos)
            parts.append((self.chunk, self.pos, self.pos + m))
            self.pos += m
            n -= m
        return parts


def per_window_normalised(x: torch.Tensor) -> torch.Tensor:
    """normalize="window": each window of a (B, n_mels, W) batch to zero mean and unit deviation on its own."""
    return (x - x.mean(dim=(1, 2), keepdim=True)) / (x.std(dim=(1, 2), keepdim=True) + 1e-5)


def built_chunks(inputs: Iterable[ChunkInput], spec: WindowSpec, memory: ChunkMemory) -> Iterator[Chunk]:
    """Each chunk laid out and put in its order (stages.py decides which files and which order)."""
    for item in inputs:
        chunk = Chunk(item.records, spec, memory)
        chunk.arrange(item.order)
        del item  # its files are views of shard bytes, whose buffer is reused once nothing refers to it
        yield chunk
