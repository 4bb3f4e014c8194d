"""Reading a shard: one read, checked against the manifest and the file index, decoded without copies.

A shard is read whole (at most `--max-shard-mb`), checked (size, then sha256: a local shard once per
process while its inode, size and mtime stay), walked (format/tar.py: checksummed headers) and its files
decoded: npy views of the tar bytes, msgpack, FLAC; nothing is unpickled. The shard must hold exactly the
files the index lists for it, each as the index describes it (path, frames, samples, intervals, split hash,
annotated flag, place in its recording), because the epoch plan, the split and len() were computed from the
index; its stored values must be finite and within the storage range (once per file version and process
for a local shard, like the sha256). A shard's files are released only once the whole shard has been
checked, so a corrupt shard is skipped whole in warn mode and never reaches the memory cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from webdataset.tariterators import group_by_keys

from ..errors import ShardError, first_line, shown
from ..format.codec import decode_flac, npy_view, unpack
from ..format.features import VALUE_LIMIT, values_out_of_range
from ..format.index import DIGEST_BYTES, Index
from ..format.manifest import ShardEntry
from ..format.names import AUDIO, INFO, SPEC
from ..format.tar import tar_members
from ..rules.splits import unit64
from ..storage.local import file_bytes_left, read_at_most
from .errorlog import SharedErrorLog
from .memory import ChunkMemory
from .perprocess import PerProcess
from .options import Reading
from .records import FileRecord
from .source import ShardSet

log = logging.getLogger("spgdataset")

Starts = Callable[[int, Dict[str, List[List[int]]], int], np.ndarray]  # (frames, intervals, position) -> starts
Labeller = Callable[[int, Dict[str, List[List[int]]]], np.ndarray]  # (position, intervals) -> frame labels


class ShardReader:
    """Reads shards of one ShardSet for one dataset: its checks, its memory cache, its counters."""

    def __init__(self, shards: ShardSet, starts: Starts, labels: Callable[[int], int], audio: bool,
                 reading: Reading, error_log: Optional[SharedErrorLog] = None,
                 frame_labels: Optional[Labeller] = None) -> None:
        """`starts`: the window rule for one file; `labels`: a file's label id; `audio`: decode the audio too;
        `reading`: the checks, what a bad shard does and the memory cache's size; `frame_labels`: a file's frame
        labels (read/framelabels.py), when items carry them."""
        self.shards, self.starts, self.labels, self.audio = shards, starts, labels, audio
        self.frame_labels = frame_labels
        self.verify, self.on_error = reading.verify, reading.on_error
        self.error_log = error_log or SharedErrorLog(0)
        features = shards.manifest.features
        self.n_mels, self.dtype = features.n_mels, np.dtype(str(features.storage_dtype)).newbyteorder("<")
        self.bounds = shards.index.shard_bounds(len(shards.manifest.shards))
        self.cache: Dict[int, FileRecord] = {}  # index position -> a checked file, kept across epochs
        self.cache_bytes, self.cache_limit = 0, reading.max_memory_cache
        self.verified: Dict[str, Tuple[Any, ...]] = {}  # local shard -> file identity when its sha256 passed
        self.values_checked: Optional[np.ndarray] = None  # per index position: stored values checked (below)
        self.value_versions: Dict[str, Tuple[Any, ...]] = {}  # local shard -> the identity they were checked for
        self.opens = 0  # shards opened by this process (read whole, or some files of one alone)
        self.last_shard: Optional[Tuple[str, Any, Optional[Tuple[Any, ...]]]] = None  # (url, bytes, identity)
        self.failed: Set[str] = set()  # shards skipped in this pass over the shards
        self.shard_memory = PerProcess(functools.partial(ChunkMemory, keep=4))  # whole shards' bytes (read_reusing)

    def new_pass(self) -> None:
        """A new pass over the shards (an epoch, a worker's share): a shard skipped in the last one is tried again."""
        self.failed.clear()

    def read(self, k: int, positions: Sequence[int], alone: bool = False) -> Optional[List[FileRecord]]:
        """The files at index `positions` (in manifest shard k, in shard order): from the memory cache when it
        holds them all, else read; None when the shard was skipped (on_error="warn"). `alone`: read each file
        by its byte range and check it against its own blake2b when the index has them (`member.*`), instead of
        reading and hashing the whole shard first: how an epoch's first chunk is read."""
        cached = [self.cache[p] for p in positions if p in self.cache]
        if len(cached) == len(positions):
            return cached
        shard = self.shards.manifest.shards[k]
        url = self.shards.url(shard)
        if url in self.failed:  # skipped once in this pass (the rest of a shard, its check): not tried again in it
            return None
        alone = alone and self.shards.index.members is not None
        records = self._read_alone(url, k, positions) if alone else self._read(shard, k, set(positions))
        if records is None:
            self.failed.add(url)
        elif not alone:  # files read alone enter the cache with their shard's whole read, once it is checked
            for record, position in zip(records, positions):
                self._remember(position, record)
        return records

    def _read(self, shard: ShardEntry, k: int, wanted: Set[int]) -> Optional[List[FileRecord]]:
        url = self.shards.url(shard)
        lo, hi = int(self.bounds[k]), int(self.bounds[k + 1])
        records: List[FileRecord] = []
        seen: Set[str] = set()
        try:
            positions = {key: lo + i for i, key in enumerate(self.shards.index.keys.slice(lo, hi))}
            if len(positions) != hi - lo:
                raise ShardError(f"{url}: the file index lists one of its keys twice")
            data, identity = self.shard_bytes(url, shard)
            checked = self._values_checked(url, identity, lo, hi)
            for sample in group_by_keys(tar_members(data, url)):
                key = sample.get("__key__")
                if key not in positions or key in seen:
                    raise ShardError(f"{url}: holds {key!r}, which the file index does not list for it (or twice)")
                seen.add(key)
                if positions[key] in wanted:
                    check = checked is None or not checked[positions[key] - lo]
                    records.append(self.decode_file(url, sample, positions[key], check))
            if len(seen) != len(positions):
                raise ShardError(f"{url}: holds {len(seen)} files, the file index lists {len(positions)} "
                                 "(truncated or replaced shard)")
        except Exception as exc:
            error = exc if isinstance(exc, ShardError) else ShardError(
                f"{url}: truncated or corrupt shard after {len(seen)} files: {first_line(exc)}")
            self._skip(error)
            return None
        if checked is not None:  # only now: a shard that failed is checked again when read again
            checked[[positions[record.key] - lo for record in records]] = True
        return records

    def _read_alone(self, url: str, k: int, positions: Sequence[int]) -> Optional[List[FileRecord]]:
        """Files `positions` of shard k each by its byte range (read_alone); None when one failed, in warn mode."""
        self.opens += 1
        try:
            return self.files_alone(k, positions)
        except Exception as exc:
            self._skip(exc if isinstance(exc, ShardError) else ShardError(f"{url}: {first_line(exc)}"))
            return None

    def files_alone(self, k: int, positions: Sequence[int]) -> List[FileRecord]:
        """Files `positions` of shard k each read alone (read_alone), by the index's member columns; raises on
        the first that fails, counting and logging nothing (the next epoch's first files, nextepoch.py)."""
        return [self.read_alone(k, p, self.member_place(k, p)) for p in positions]

    def _skip(self, error: ShardError) -> None:
        """Raise `error`, or with on_error="warn" log and count it (the caller then skips the shard)."""
        if self.on_error == "raise":
            raise error from None
        self.error_log.skipped(str(error))
        log.warning("skipping: %s", error)

    def member_place(self, k: int, position: int) -> Tuple[int, int, Optional[bytes]]:
        """(first header byte, bytes, blake2b) of the members of the file at `position` in shard k, from the
        index's member columns, checked to lie inside the shard."""
        members = self.shards.index.members
        assert members is not None
        return self.checked_place(k, int(members[0][position]), int(members[1][position]),
                                  members[2][position].tobytes())

    def checked_place(self, k: int, offset: int, size: int,
                      digest: Optional[bytes]) -> Tuple[int, int, Optional[bytes]]:
        """(offset, size, digest) of a file in shard k, once its byte range is known to lie inside the shard."""
        shard = self.shards.manifest.shards[k]
        if offset < 0 or size < 512 or offset + size > shard.bytes:
            raise ShardError(f"{self.shards.url(shard)}: the file index places a file at bytes {offset}.."
                             f"{offset + size} of a shard of {shard.bytes} (edited or mismatched index)")
        return offset, size, digest

    def read_alone(self, k: int, position: int, place: Tuple[int, int, Optional[bytes]]) -> FileRecord:
        """The file at `position` of shard k read alone: the byte range `place` gives (first header byte, bytes,
        blake2b or None), in one pread or range request, checked against the blake2b (with `verify`), then
        decoded and checked as every file is (decode_file)."""
        shard = self.shards.manifest.shards[k]
        url, key = self.shards.url(shard), self.shards.index.keys[position]
        offset, size, digest = place
        data = self.shards.storage.read_range(shard.name, offset, size)
        if len(data) != size:
            raise ShardError(f"{url}: {len(data)} bytes at byte {offset}, the file index says {key!r} has {size} "
                             "there (truncated or replaced shard)")
        if self.verify and digest is not None and not self._unchanged(url, shard) and blake2b(data) != digest:
            raise ShardError(f"{url}: the bytes of {key!r} disagree with the file index's blake2b (corrupt or "
                             "replaced shard)")
        try:
            samples = list(group_by_keys(tar_members(data, url, whole=False)))
            if [sample["__key__"] for sample in samples] != [key]:
                raise ShardError(f"{url}: at byte {offset} the file index places {key!r}, the shard holds "
                                 f"{[sample['__key__'] for sample in samples][:3]}")
            return self.decode_file(url, samples[0], position, check_values=True)
        except ShardError:
            raise
        except Exception as exc:  # tar, npy, msgpack and FLAC each raise their own types for garbage
            raise ShardError(f"{url}: {key!r} at byte {offset}: corrupt: {first_line(exc)}") from None

    def _unchanged(self, url: str, shard: ShardEntry) -> bool:
        """A local shard whose sha256 passed in this process and whose file has not changed since (as the whole
        shard is hashed once per process, its files are not checked again one by one; verify="always" does)."""
        if self.verify == "always" or url not in self.verified:
            return False
        try:
            st = os.stat(url)
        except (OSError, ValueError):
            return False
        return self.verified[url] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, shard.sha256)

    def shard_bytes(self, url: str, shard: ShardEntry) -> Tuple[Any, Optional[Tuple[Any, ...]]]:
        """The whole shard in one read, checked against the manifest's size and (see `verify`) sha256, and the
        identity of the local file it came from (None for a stream). The last shard read is kept: an epoch reads
        a shard again right away when its first chunk is read alone (stages.read_plans), and neither the download
        nor the hash should happen twice."""
        if self.last_shard is not None and self.last_shard[0] == url:
            return self.last_shard[1], self.last_shard[2]
        stream = self.shards.open_shard(shard)
        try:
            data = read_reusing(stream, shard.bytes, self.shard_memory.get())
            identity = _file_identity(stream, len(data), shard.sha256)
        finally:
            stream.close()
        self.opens += 1
        if len(data) != shard.bytes:
            size = f"more than {shard.bytes}" if len(data) > shard.bytes else str(len(data))
            raise ShardError(f"{url}: {size} bytes, the manifest says {shard.bytes} (truncated, appended to "
                             "or replaced)")
        if self.verify and (self.verify == "always" or identity is None or self.verified.get(url) != identity):
            digest = hashlib.sha256(data).hexdigest()
            if digest != shard.sha256:
                raise ShardError(f"{url}: sha256 {digest[:12]}... disagrees with the manifest's "
                                 f"{shard.sha256[:12]}... ({len(data)} bytes: corrupt or replaced)")
            if identity is not None:
                self.verified[url] = identity
        self.last_shard = (url, data, identity)
        return data, identity

    def _values_checked(self, url: str, identity: Optional[Tuple[Any, ...]], lo: int, hi: int) -> Optional[np.ndarray]:
        """Which files of the shard (index positions lo..hi) had their stored values checked in this process,
        for this version of the file (`identity`, as the sha256 skip); None: check every file (a stream, or
        verify="always"). So a local shard's values are checked in its first epoch only."""
        if identity is None or self.verify == "always":
            return None
        if self.values_checked is None:
            self.values_checked = np.zeros(self.shards.index.files, dtype=bool)  # pages only where touched
        if self.value_versions.get(url) != identity:
            self.values_checked[lo:hi] = False
            self.value_versions[url] = identity
        return self.values_checked[lo:hi]

    def decode_file(self, url: str, sample: Dict[str, Any], position: int, check_values: bool) -> FileRecord:
        """One file of a shard (a sample of its members), checked against its index entry and the manifest's
        features; its stored values when `check_values`. Also for a file read alone (access.py)."""
        key: Any = sample.get("__key__")
        index = self.shards.index
        if INFO not in sample or SPEC not in sample:
            raise ShardError(f"{url}: sample {key!r} lacks {INFO if INFO not in sample else SPEC}")
        info = unpack(sample[INFO])
        if not isinstance(info, dict) or info.get("params") != self.shards.manifest.params:
            raise ShardError(f"{url}: sample {key!r} was written with other feature parameters than the manifest's")
        frames, samples = int(index.frames[position]), int(index.samples[position])
        intervals = index.intervals_of(position)
        _check_record(url, key, info, index, position, intervals)
        spec = npy_view(sample[SPEC])
        if spec.dtype != self.dtype or spec.shape != (self.n_mels, frames) or not spec.flags.c_contiguous:
            raise ShardError(f"{url}: sample {key!r} spectrogram is {spec.dtype.str} {spec.shape}, expected C-ordered "
                             f"{self.dtype.str} ({self.n_mels}, {frames})")
        if check_values and values_out_of_range(spec):
            raise ShardError(f"{url}: sample {key!r}: its spectrogram holds values that are not finite or beyond the "
                             f"{spec.dtype.name} storage range (+-{VALUE_LIMIT[spec.dtype.name]:g})")
        audio = None
        if self.audio:
            if AUDIO not in sample:
                raise ShardError(f"{url}: sample {key!r} has no audio member")
            audio = decode_flac(sample[AUDIO])
            if audio.ndim != 1 or len(audio) != samples:
                raise ShardError(f"{url}: sample {key!r} audio has shape {audio.shape}, expected ({samples},)")
        return FileRecord(key, index.paths[position], spec, intervals, info.get("metadata") or {},
                          self.starts(frames, intervals, position), self.labels(position), audio,
                          index.segment_of(position)[0],
                          None if self.frame_labels is None else self.frame_labels(position, intervals))

    def _remember(self, position: int, record: FileRecord) -> None:
        """Keep a checked file for later epochs while the cache has room (first come, first kept)."""
        if self.cache_limit and position not in self.cache and self.cache_bytes + record.nbytes <= self.cache_limit:
            # own copies: a view would keep the whole shard buffer alive for one file
            self.cache[position] = dataclasses.replace(
                record, spec=record.spec.copy(), audio=None if record.audio is None else record.audio.copy())
            self.cache_bytes += record.nbytes


def _check_record(url: str, key: str, info: Dict[str, Any], index: Index, position: int,
                  intervals: Dict[str, List[List[int]]]) -> None:
    """The file's own record (info.msgpack) against every index column the reader relies on for it: path,
    frames, samples and intervals (len() and the windows), path_unit (the split), annotated (the content rule)
    and, in a set with segments, where the row stands in its recording (offset, owned)."""
    recorded = info.get("intervals") or {}
    if not isinstance(recorded, dict):
        raise ShardError(f"{url}: sample {key!r}: intervals {shown(recorded, 80)} is not an object of names")
    expected = {"path": index.paths[position], "frames": int(index.frames[position]),
                "samples": int(index.samples[position]), "intervals": intervals,
                "path_unit": int(index.path_unit[position]), "annotated": int(index.annotated[position])}
    found = dict(info, intervals={n: s for n, s in recorded.items() if s}, annotated=int(bool(recorded)))
    found["path_unit"] = unit64(found["path"]) if isinstance(found.get("path"), str) else None
    place = info.get("segment")
    if isinstance(place, dict):
        place = [place.get("offset"), place.get("owned")]
    elif place is None and index.offset is not None:  # a whole file in a set with segments
        place = [0, found.get("frames")]
    found["segment (offset, owned)"] = place
    expected["segment (offset, owned)"] = None if index.offset is None else list(index.segment_of(position))
    for field, value in expected.items():
        if found.get(field) != value:
            raise ShardError(f"{url}: sample {key!r}: {field} {shown(found.get(field), 80)} disagrees with the "
                             f"file index's {shown(value, 80)}")


def read_reusing(stream: Any, limit: int, memory: ChunkMemory) -> Any:
    """What read_at_most(stream, limit) reads, from a file of known size: into a buffer of `memory` that no
    earlier shard's files still use, as a read-only uint8 array (its files are views of it). Why: a fresh
    7 MB bytes object per shard is faulted in page by page, and freed and mapped anew by malloc when the
    thread that reads it is not the one that frees it (about 10,000 page faults and 12 ms of system time an
    epoch of a 1-hour set)."""
    size = file_bytes_left(stream)
    if size is None or not 0 <= size <= limit:  # a stream (S3), or a file too large: read_at_most's own reading
        return read_at_most(stream, limit)
    buffer = memory.empty((size + 1,), torch.uint8).numpy()  # one more byte tells a file grown since
    got = 0
    while got <= size:
        n = stream.readinto(memoryview(buffer)[got:])
        if not n:
            break
        got += n
    data = buffer[:got]
    data.setflags(write=False)
    return data


def _file_identity(stream: Any, size: int, sha256: str) -> Optional[Tuple[Any, ...]]:
    """(device, inode, size, mtime, expected sha256) of a local shard just read whole, else None.

    A shard whose sha256 passed is not hashed again while this identity holds: rewriting, replacing or
    truncating the file changes its inode, size or mtime. Remote streams have no identity: always hashed.
    """
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    if st.st_size != size:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256


def blake2b(data: Any) -> bytes:
    """A file's digest as the index's `member.blake2b` holds it."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()

