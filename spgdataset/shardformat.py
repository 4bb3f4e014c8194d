"""The shard format: sample keys, members, npy and msgpack encoding, deterministic tar, manifest files.

A shard `shard-000012.tar` is a plain tar (WebDataset layout) holding, per audio file, members
`{key}.spec.npy` (C-ordered (n_mels, T) log-mel), `{key}.info.msgpack` (frames, intervals, metadata)
and with --with-audio `{key}.audio.flac`. Beside the shards: `manifest.json` and `index.msgpack`.
Nothing here is pickled: npy with object dtype is refused on read.
"""

from __future__ import annotations

import gc
import io
import os
import re
import tarfile
from typing import Any, Dict, Iterator, Union

import msgpack
import numpy as np

from .errors import SpgError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.msgpack"
STATE_DIR = ".spg-state"  # per-shard records of a run in progress; a reader ignores it
SPEC, INFO, AUDIO = "spec.npy", "info.msgpack", "audio.flac"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_OCTAL = re.compile(rb"[0-7]+")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(number: int, path: str) -> str:
    """Unique, tar- and WebDataset-safe key: running number + readable slug of the path (no dots)."""
    stem = os.path.splitext(path)[0]
    slug = _UNSAFE.sub("_", stem).strip("_")[-60:]
    return f"{number:07d}_{slug}" if slug else f"{number:07d}"


def npy_header(array: np.ndarray) -> bytes:
    """The npy header numpy writes before a C-ordered `array`'s bytes (the payload is not copied here)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(array))
    return buf.getvalue()


_SIMPLE_NPY = re.compile(rb"\{'descr': '([<>|][a-z][0-9]+)', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \}")


def npy_view(data: Union[bytes, memoryview]) -> np.ndarray:
    """A read-only array over the npy bytes, without copying the payload.

    The headers spg-shard writes are parsed with one regular expression (numpy's own parser compiles the
    header as Python source, 0.15 ms per file); anything else goes through numpy's parser.
    """
    if bytes(data[:8]) == b"\x93NUMPY\x01\x00":
        length = int.from_bytes(bytes(data[8:10]), "little")
        match = _SIMPLE_NPY.match(bytes(data[10 : 10 + length]).rstrip(b" \n"))
        if match:
            dtype = np.dtype(match.group(1).decode())
            shape = tuple(int(v) for v in match.group(2).replace(b" ", b"").split(b",") if v)
            count = int(np.prod(shape)) if shape else 1
            return np.frombuffer(data, dtype=dtype, count=count, offset=10 + length).reshape(shape)
    header = io.BytesIO(bytes(data[:1024]) if len(data) > 1024 else bytes(data))
    version = np.lib.format.read_magic(header)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(header)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(header)
    else:
        raise ValueError(f"unsupported npy version {version}")
    if dtype.hasobject:
        raise ValueError("npy member has object dtype (would need pickle); refusing to decode")
    count = int(np.prod(shape))
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header.tell())
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def tar_members(data: Union[bytes, memoryview], url: str) -> Iterator[Dict[str, Any]]:
    """Members of a whole tar held in memory, as WebDataset file samples {fname, data, __url__}.

    Why not tarfile: its stream parser spent more time than building the batches (tools/bench.py
    profile); here a shard is one read, one sha256 call and zero-copy memoryview slices. Headers are
    checksummed, so a corrupt or truncated shard is an error, never silently short.
    """
    view = memoryview(data)
    offset = 0
    while offset + 512 <= len(view):
        header = bytes(view[offset : offset + 512])
        if header == bytes(512):
            return  # end-of-archive marker
        stored = int(header[148:156].strip(b"\0 ") or b"0", 8)
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise ValueError(f"bad tar header checksum at byte {offset}")
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
        size_field = header[124:136].strip(b"\0 ") or b"0"
        if not _OCTAL.fullmatch(size_field):  # a sign or a base-256 size would let the walk go back or loop
            raise ValueError(f"{name}: bad size field {size_field!r} in the tar header at byte {offset}")
        size = int(size_field, 8)
        start = offset + 512
        if start + size > len(view):
            raise ValueError(f"{name}: member ends at byte {start + size}, the tar has {len(view)}")
        if header[156:157] in (b"0", b"\0"):
            yield {"fname": f"{prefix}/{name}" if prefix else name, "data": view[start : start + size], "__url__": url}
        offset = start + (size + 511) // 512 * 512
    raise ValueError(f"tar ends at byte {len(view)} without its end-of-archive marker (truncated)")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """msgpack -> Python. The cyclic GC is paused meanwhile: a 100-hour index is ~100k small containers,
    and collections triggered by their allocation tripled the time (msgpack's docs advise the same)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    finally:
        if enabled:
            gc.enable()


def tar_member(name: str, *parts: Any) -> bytes:
    """One tar member (USTAR header + data + padding) whose bytes depend only on name and data: fixed
    mtime, owner and mode. `parts` (bytes-like, joined) spare a copy of a large payload, e.g. an npy header
    and the array's own memory. Built in the writer's workers, so the main process only writes them."""
    size = sum(memoryview(p).nbytes for p in parts)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return b"".join([header, *parts, bytes(-size % tarfile.BLOCKSIZE)])


def tar_end(size: int) -> bytes:
    """What follows `size` bytes of members: the end-of-archive blocks and padding to a whole record,
    as tarfile writes them."""
    return bytes(2 * tarfile.BLOCKSIZE + (-(size + 2 * tarfile.BLOCKSIZE) % tarfile.RECORDSIZE))


def write_bytes_atomic(path: str, *parts: Any) -> None:
    """Write `parts` (bytes-like, in order) to a temporary name in the same folder, then rename: readers
    see all or nothing. A failure (a full disk) is an SpgError naming `path`; the temporary file is removed."""
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise SpgError(f"{path}: cannot write: {exc.strerror or exc}") from None
