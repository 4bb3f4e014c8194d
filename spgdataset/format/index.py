"""The file index as columns: one numpy array per field, never a Python object per file.

Why: a million files as msgpack rows cost a reader 75 s and 10 GB per process before its first batch. As
columns, opening an index is a digest check and one `np.frombuffer` per column over a memory map (local) or
the downloaded bytes (S3); forked DataLoader workers share those pages, and everything a plan needs (window
counts, splits, labels) is vectorised numpy over them.

File layout (`index.bin`, little-endian):

    bytes 0-7     b"SPGIDX\\x00\\x01"
    bytes 8-15    header length H (uint64)
    bytes 16-     header: msgpack {"files": N, "columns": [[name, dtype, count, offset], ...],
                  "intervals": [interval names], "metadata": [[key, vocabulary], ...], "free_form": [keys]}
    then          each column's bytes at its offset (64-byte aligned)

Columns, N = files, in shard order: shard (int32), frames and samples (int64), path_unit (uint64: the split
hash of the path, rules/splits.py), annotated (uint8: the file has interval names), key and path as UTF-8
bytes with N + 1 offsets, per interval name i `iv{i}.offsets` (N + 1), `iv{i}.start`, `iv{i}.stop` (samples at
the feature rate), per metadata key j `meta{j}` (int32 ids into its vocabulary, -1: the file lacks the key).
A metadata key with more than MAX_VOCABULARY distinct values (transcripts, ids) is free-form: it is not in the
index (a plan never needs it); `meta` outputs read it from the file's info.msgpack. Optional, all of a group
or none (_GROUPS): with segments of long files (write/plan.py), `offset` and `owned` (int64): a row's first
frame in its file and the frames whose windows it owns (rules/windows.py); `member.offset`, `member.bytes`
(int64), `member.blake2b` (16 uint8 per file): the file's members in its shard (first header byte, bytes) and
their digest, to read and check one file alone (read/access.py; older sets lack them, older readers skip them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import msgpack
import numpy as np

from ..rules.labels import label_ids, label_token, vocabularies
from ..rules.splits import path_units

MAGIC = b"SPGIDX\x00\x01"
ALIGN = 64
MAX_VOCABULARY = 100_000
MAX_FRAMES = 1 << 40  # 350 years at 100 frames per second: more is an edited index, not a recording
BLOCK = 1 << 20  # elements per block of a whole-column check (bounded temporaries at any size)
MAX_TOTAL = 1 << 62  # frames of one shard: what a manifest may say (format/manifest.py MAX_COUNT)
_SCALARS = {"shard": "<i4", "frames": "<i8", "samples": "<i8", "path_unit": "<u8", "annotated": "|u1"}
_GROUPS = {"offset": "<i8", "owned": "<i8"}, {"member.offset": "<i8", "member.bytes": "<i8", "member.blake2b": "|u1"}
DIGEST_BYTES = 16  # member.blake2b: bytes of each file's blake2b digest


@dataclasses.dataclass
class Strings:
    """N strings as one UTF-8 buffer and N + 1 offsets: `strings[i]` decodes one, nothing is made per file."""

    offsets: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.slice(i, i + 1)[0]

    def slice(self, lo: int, hi: int) -> List[str]:
        """Strings lo..hi; their offsets are checked here, where they are used (BadIndex when out of order)."""
        edges = self.offsets[lo : hi + 1]
        if len(edges) and (np.diff(edges) < 0).any():
            raise BadIndex(f"string offsets {lo}..{hi} out of order")
        text = self.data[edges[0] : edges[-1]].tobytes() if len(edges) else b""
        edges = (edges - edges[0]).tolist() if len(edges) else []
        return [text[a:b].decode("utf-8") for a, b in zip(edges[:-1], edges[1:])]


@dataclasses.dataclass
class Spans:
    """The intervals of one name for every file: file i's are start[offsets[i]:offsets[i + 1]] (samples)."""

    offsets: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    def of(self, i: int) -> List[List[int]]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return [[int(a), int(b)] for a, b in zip(self.start[lo:hi], self.stop[lo:hi])]

    def file_of_span(self) -> np.ndarray:
        """The file of each span (int64)."""
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), np.diff(self.offsets))


@dataclasses.dataclass
class Labels:
    """One metadata key, dictionary-encoded: `ids[i]` indexes `vocabulary` (sorted, labels.py); -1: missing."""

    vocabulary: List[Any]
    ids: np.ndarray


@dataclasses.dataclass
class Index:
    """Every file of a shard set, as columns (see the module docstring)."""

    shard: np.ndarray
    frames: np.ndarray
    samples: np.ndarray
    path_unit: np.ndarray
    annotated: np.ndarray
    keys: Strings
    paths: Strings
    intervals: Dict[str, Spans]
    metadata: Dict[str, Labels]
    free_form: List[str]
    offset: Optional[np.ndarray] = None  # segments of long files (write/plan.py): first frame in the file
    owned: Optional[np.ndarray] = None  # and the frames whose windows the row owns; None: whole files only
    members: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = None  # member.offset, .bytes, .blake2b (N, 16)
    _checked: set = dataclasses.field(default_factory=set, repr=False)  # names whose span offsets are checked

    @property
    def files(self) -> int:
        return len(self.frames)

    def shard_bounds(self, shards: int) -> np.ndarray:
        """(shards + 1,) file positions: shard k's files are [bounds[k], bounds[k + 1]) (files are in shard order)."""
        return np.searchsorted(self.shard, np.arange(shards + 1), side="left").astype(np.int64)

    def checked_spans(self, name: str) -> Spans:
        """The spans of `name`, their offsets checked in order (in blocks: memory stays bounded) before a
        computation over all files relies on them; a file's own spans (`intervals_of`) need no such check."""
        spans = self.intervals[name]
        if name not in self._checked:
            for lo in range(0, len(spans.offsets), BLOCK):
                if (np.diff(spans.offsets[max(lo - 1, 0) : lo + BLOCK]) < 0).any():
                    raise BadIndex(f"intervals[{name!r}]: offsets out of order")
            self._checked.add(name)
        return spans

    def intervals_of(self, i: int) -> Dict[str, List[List[int]]]:
        """File i's non-empty intervals, {name: [[start, stop], ...]} (samples at the feature rate)."""
        return {name: spans.of(i) for name, spans in self.intervals.items()
                if spans.offsets[i + 1] > spans.offsets[i]}

    def row(self, i: int) -> Dict[str, Any]:
        """File i as one dict (key, path, shard number, frames, samples, non-empty intervals, and the metadata of
        the dictionary-encoded keys): for people and tools, not for the reader's hot path."""
        metadata = {key: m.vocabulary[m.ids[i]] for key, m in self.metadata.items() if m.ids[i] >= 0}
        row = {"key": self.keys[i], "path": self.paths[i], "shard": int(self.shard[i]),
               "frames": int(self.frames[i]), "samples": int(self.samples[i]), "intervals": self.intervals_of(i),
               "metadata": metadata}
        if self.offset is not None and self.owned is not None:
            row.update(offset=int(self.offset[i]), owned=int(self.owned[i]))
        return row

    def audio_samples(self, files: np.ndarray, hop_length: int) -> np.ndarray:
        """Samples of audio each of `files` (positions) stands for: a segment, only those it owns, so that
        sums over segments are the file's."""
        if self.offset is None or self.owned is None:
            return self.samples[files]
        owned, frames = self.owned[files], self.frames[files]
        return np.where(owned < frames, owned * hop_length, self.samples[files])

    def recordings(self, files: np.ndarray) -> np.ndarray:
        """Whether each of `files` starts a recording (a whole file, or the first segment of one)."""
        return np.ones(len(files), dtype=bool) if self.offset is None else self.offset[files] == 0

    def segment_of(self, i: int) -> Tuple[int, Optional[int]]:
        """(first frame in its file, frames it owns) of row i; (0, None) for a whole file."""
        if self.offset is None or self.owned is None:
            return 0, None
        return int(self.offset[i]), int(self.owned[i])


def encode(rows: Sequence[Mapping[str, Any]], shard_numbers: Sequence[int],
           vocabs: Optional[Mapping[str, List[Any]]] = None) -> bytes:
    """The index file of `rows` (the writer's per-file rows: key, path, frames, samples, intervals, metadata),
    row i in shard `shard_numbers[i]` (non-decreasing). `vocabs`: labels.vocabularies of the rows' metadata,
    when the caller has them already."""
    n = len(rows)
    columns: Dict[str, np.ndarray] = {
        "shard": np.asarray(shard_numbers, dtype="<i4"),
        "frames": np.fromiter((r["frames"] for r in rows), dtype="<i8", count=n),
        "samples": np.fromiter((r["samples"] for r in rows), dtype="<i8", count=n),
        "path_unit": path_units(r["path"] for r in rows).astype("<u8"),
        "annotated": np.fromiter((bool(r["intervals"]) for r in rows), dtype="|u1", count=n),
    }
    if any("offset" in r for r in rows):  # segments of long files: the two columns, for every row
        columns["offset"] = np.fromiter((r.get("offset", 0) for r in rows), dtype="<i8", count=n)
        columns["owned"] = np.fromiter((r.get("owned", r["frames"]) for r in rows), dtype="<i8", count=n)
    if rows and all("member" in r for r in rows):  # [offset, bytes, blake2b] of the file's members in its shard
        for j, name in enumerate(("member.offset", "member.bytes")):
            columns[name] = np.fromiter((r["member"][j] for r in rows), dtype="<i8", count=n)
        columns["member.blake2b"] = np.frombuffer(b"".join(bytes(r["member"][2]) for r in rows), dtype="|u1")
    for name, values in (("key", [r["key"] for r in rows]), ("path", [r["path"] for r in rows])):
        columns[f"{name}.offsets"], columns[f"{name}.data"] = _strings(values)
    names = sorted({name for r in rows for name in r["intervals"]})
    for i, name in enumerate(names):
        columns.update(_spans(f"iv{i}", [r["intervals"].get(name, ()) for r in rows]))
    vocabs = vocabularies(r["metadata"] for r in rows) if vocabs is None else vocabs
    encoded = [key for key, vocab in vocabs.items() if len(vocab) <= MAX_VOCABULARY]
    for j, key in enumerate(encoded):
        ids = label_ids(vocabs[key])
        columns[f"meta{j}"] = np.fromiter(
            (ids[label_token(r["metadata"][key])] if key in r["metadata"] else -1 for r in rows), dtype="<i4", count=n)
    header = {"files": n, "intervals": names, "metadata": [[key, vocabs[key]] for key in encoded],
              "free_form": [key for key in vocabs if key not in encoded]}
    return pack_columns(header, columns)


def _strings(values: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    encoded = [v.encode("utf-8") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype="<i8")
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype="|u1")


def _spans(prefix: str, per_file: List[Sequence[Sequence[int]]]) -> Dict[str, np.ndarray]:
    flat = [span for spans in per_file for span in spans]
    offsets = np.zeros(len(per_file) + 1, dtype="<i8")
    np.cumsum([len(spans) for spans in per_file], out=offsets[1:])
    pairs = np.array(flat, dtype="<i8").reshape(-1, 2)
    return {f"{prefix}.offsets": offsets, f"{prefix}.start": np.ascontiguousarray(pairs[:, 0]),
            f"{prefix}.stop": np.ascontiguousarray(pairs[:, 1])}


def pack_columns(header: Dict[str, Any], columns: Dict[str, np.ndarray]) -> bytes:
    """Header and columns laid out as the module docstring says (offsets need the header's own length)."""
    entries: List[List[Any]] = [[name, array.dtype.str, int(array.size), 0] for name, array in columns.items()]
    for _ in range(2):  # the offsets' digits change the header length at most once
        head = msgpack.packb(dict(header, columns=entries), use_bin_type=True)
        offset = _aligned(16 + len(head))
        for entry, array in zip(entries, columns.values()):
            entry[3] = offset
            offset = _aligned(offset + array.nbytes)
    head = msgpack.packb(dict(header, columns=entries), use_bin_type=True)
    parts, position = [MAGIC, len(head).to_bytes(8, "little"), head], 16 + len(head)
    for (_, _, _, offset), array in zip(entries, columns.values()):
        parts += [bytes(offset - position), array.tobytes()]
        position = offset + array.nbytes
    return b"".join(parts)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


class BadIndex(ValueError):
    """What is wrong with an index file (the caller names the file)."""


def decode(buffer: Any) -> Index:
    """An Index over `buffer` (bytes or a memory map; the arrays are views of it, not copies), checked for
    layout: every column within the buffer, of its declared dtype and of a consistent length."""
    view = memoryview(buffer)
    if len(view) < 16 or bytes(view[:8]) != MAGIC:
        raise BadIndex("not a columnar index (bad magic bytes)")
    size = int.from_bytes(view[8:16], "little")
    if size > len(view) - 16:
        raise BadIndex("header runs past the end of the file")
    try:
        header = msgpack.unpackb(view[16 : 16 + size], raw=False, strict_map_key=False)
        n, columns = int(header["files"]), {c[0]: _column(view, c) for c in header["columns"]}
        names, metadata = list(header["intervals"]), [(str(k), list(v)) for k, v in header["metadata"]]
        free_form = [str(k) for k in header.get("free_form", [])]
    except (KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
        raise BadIndex(f"unreadable header ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})") from None
    need = {**{name: (n,) for name in _SCALARS}, "key.offsets": (n + 1,), "path.offsets": (n + 1,)}
    need.update({f"iv{i}.offsets": (n + 1,) for i in range(len(names))})
    for group in (group for group in _GROUPS if group.keys() & columns.keys()):
        need.update({name: (n * DIGEST_BYTES if name == "member.blake2b" else n,) for name in group})
    for name, shape in need.items():
        if name not in columns or columns[name].shape != shape or columns[name].dtype.str != _dtype(name):
            raise BadIndex(f"column {name!r} missing or not {_dtype(name)} of length {shape[0]}")
    segmented, members = "offset" in columns, [columns[c] for c in _GROUPS[1]] if "member.offset" in columns else None
    return Index(
        shard=columns["shard"], frames=columns["frames"], samples=columns["samples"],
        path_unit=columns["path_unit"], annotated=columns["annotated"],
        keys=_checked_strings(columns, "key"), paths=_checked_strings(columns, "path"),
        intervals={name: _checked_spans(columns, f"iv{i}") for i, name in enumerate(names)},
        metadata={key: _checked_labels(columns, f"meta{j}", vocab, n) for j, (key, vocab) in enumerate(metadata)},
        free_form=free_form, offset=columns["offset"] if segmented else None,
        owned=columns["owned"] if segmented else None,
        members=None if members is None else (members[0], members[1], members[2].reshape(n, DIGEST_BYTES)))


def _dtype(name: str) -> str:
    return {**_SCALARS, **_GROUPS[0], **_GROUPS[1]}.get(name, "<i8" if name.endswith(".offsets") else "")


def _column(view: memoryview, entry: Sequence[Any]) -> np.ndarray:
    name, dtype, count, offset = str(entry[0]), np.dtype(entry[1]), int(entry[2]), int(entry[3])
    if dtype.hasobject or count < 0 or offset < 0 or offset + count * dtype.itemsize > len(view):
        raise BadIndex(f"column {name!r} ({dtype.str} x {count} at byte {offset}) does not fit the file")
    return np.frombuffer(view, dtype=dtype, count=count, offset=offset)


def _offsets_span(offsets: np.ndarray, length: int, name: str) -> None:
    """The ends only: offsets in between are checked where they are used (Strings.slice, checked_spans)."""
    if offsets[0] != 0 or offsets[-1] != length:
        raise BadIndex(f"{name}: offsets do not run from 0 to {length}")


def _checked_strings(columns: Dict[str, np.ndarray], name: str) -> Strings:
    data = columns.get(f"{name}.data")
    if data is None or data.dtype != np.uint8:
        raise BadIndex(f"column {name + '.data'!r} missing or not bytes")
    _offsets_span(columns[f"{name}.offsets"], len(data), name)
    return Strings(columns[f"{name}.offsets"], data)


def _checked_spans(columns: Dict[str, np.ndarray], prefix: str) -> Spans:
    offsets = columns[f"{prefix}.offsets"]
    start, stop = columns.get(f"{prefix}.start"), columns.get(f"{prefix}.stop")
    if start is None or stop is None or start.dtype.str != "<i8" or stop.dtype.str != "<i8" or \
            len(start) != len(stop):
        raise BadIndex(f"{prefix}: start/stop columns missing or not int64 of one length")
    _offsets_span(offsets, len(start), prefix)
    return Spans(offsets, start, stop)


def _checked_labels(columns: Dict[str, np.ndarray], name: str, vocabulary: List[Any], n: int) -> Labels:
    ids = columns.get(name)
    if ids is None or ids.dtype.str != "<i4" or ids.shape != (n,):
        raise BadIndex(f"column {name!r} missing or not int32 of length {n}")
    try:
        if len({label_token(v) for v in vocabulary}) != len(vocabulary):
            raise BadIndex(f"{name}: a label is listed twice")
    except TypeError as exc:
        raise BadIndex(f"{name}: {exc}") from None
    if n and (ids.min() < -1 or ids.max() >= len(vocabulary)):
        raise BadIndex(f"{name}: ids outside its vocabulary of {len(vocabulary)}")
    return Labels(vocabulary, ids)


def check_values(index: Index, hop_length: int, shards: Sequence[Mapping[str, Any]],
                 segmented: bool = False) -> Optional[str]:
    """What is wrong with the columns every plan relies on, against the manifest's shards, or None.

    Shard numbers in range and in order, every shard's file and frame counts the manifest's, frames following
    from samples (1 + samples // hop); the offset/owned columns exactly when the manifest is format 3
    (`segmented`), their rows tiling each recording. In blocks (bounded temporaries) and only these columns,
    so that a large index is not paged in whole: the rest (paths, intervals, path units, annotated flags,
    segment places) is checked file by file against each shard as it is read (read/decode.py)."""
    if segmented and index.offset is None:
        return "the manifest says format 3 (segments), the index has no offset/owned columns"
    if not segmented and index.offset is not None:
        return "offset/owned columns (segments) in an index whose manifest is not format 3"
    n, s = index.files, len(shards)
    files, frames = np.zeros(s, dtype=np.int64), np.zeros(s, dtype=np.int64)
    for lo in range(0, n, BLOCK):
        shard, block_frames = index.shard[lo : lo + BLOCK], index.frames[lo : lo + BLOCK]
        previous = index.shard[lo - 1 : lo] if lo else shard[:0]
        if shard.min() < 0 or shard.max() >= s or (np.diff(np.concatenate((previous, shard))) < 0).any():
            return f"shard numbers outside 0..{s - 1} or not in shard order"
        if block_frames.min() < 1 or block_frames.max() > MAX_FRAMES:
            return f"a file with frames outside 1..{MAX_FRAMES}"
        if (block_frames != 1 + index.samples[lo : lo + BLOCK] // hop_length).any():
            return f"frames do not follow from samples at hop {hop_length}"
        if segmented and (tiling := _tiling_problem(index, lo, min(lo + BLOCK, n))):
            return tiling
        files += np.bincount(shard, minlength=s)
        _add_by_shard(frames, shard, block_frames)
        if frames.max() > MAX_TOTAL:  # no manifest count is larger; the next block cannot overflow int64
            return f"more than {MAX_TOTAL} frames in one shard"
    for k, row in enumerate(shards):
        if files[k] != row["files"] or frames[k] != row["frames"]:
            return (f"{files[k]} files, {int(frames[k])} frames in {row['name']}; the manifest says "
                    f"{row['files']} files, {row['frames']} frames")
    return None


def _add_by_shard(totals: np.ndarray, shard: np.ndarray, values: np.ndarray) -> None:
    """totals[k] += the sum of values over the (sorted) rows of shard k, in exact int64 (a float64 bincount is
    exact only to 2**53; a block's sum is at most BLOCK * MAX_FRAMES = 2**60)."""
    firsts = np.concatenate(([0], np.flatnonzero(np.diff(shard)) + 1))
    totals[shard[firsts]] += np.add.reduceat(values, firsts)


def _tiling_problem(index: Index, lo: int, hi: int) -> Optional[str]:
    """Segment rows lo..hi-1 against their next rows: a row with offset > 0 continues the row before it (same
    path unit, offset = its offset + owned), so no frame's windows are owned twice or by no row; a row before
    an offset 0 (and the last row) ends its recording and owns every frame it holds."""
    assert index.offset is not None and index.owned is not None
    end = min(hi + 1, index.files)
    offset, owned, frames = index.offset[lo:end], index.owned[lo:end], index.frames[lo:end]
    if offset.min() < 0 or offset.max() > MAX_FRAMES or owned.min() < 1 or (owned > frames).any():
        return "a segment with an offset outside 0..MAX_FRAMES or owning frames it does not hold"
    if lo == 0 and offset[0] != 0:
        return f"the first row is a segment at offset {int(offset[0])}, not the start of a recording"
    unit = index.path_unit[lo:end]
    goes_on = offset[1:] > 0
    if (goes_on & ((unit[1:] != unit[:-1]) | (offset[1:] != offset[:-1] + owned[:-1]))).any():
        return "a segment row that does not continue the row before it (another path, or an overlap or gap)"
    if (~goes_on & (owned[:-1] != frames[:-1])).any() or (end == index.files and owned[-1] != frames[-1]):
        return "a recording's last segment row owns fewer frames than it holds"
    return None


def from_rows(rows: Sequence[Mapping[str, Any]], shard_names: Sequence[str]) -> Index:
    """An Index from the rows of a format-1 `index.msgpack` (already checked row by row)."""
    number = {name: k for k, name in enumerate(shard_names)}
    ordered = sorted(rows, key=lambda row: number[row["shard"]])  # stable: keeps tar order
    return decode(encode(ordered, [number[r["shard"]] for r in ordered]))
