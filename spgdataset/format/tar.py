"""Tar as the shard format uses it: deterministic members on the way in, a checked walk on the way out."""

from __future__ import annotations

import re
import tarfile
from typing import Any, Dict, Iterator, List, Tuple, Union

_OCTAL = re.compile(rb"[0-7]+")


def tar_member(name: str, *parts: Any) -> List[Any]:
    """One tar member as pieces (USTAR header, data, padding) whose bytes depend only on name and data: fixed
    mtime, owner and mode. The pieces are written one after the other, so a large payload (an npy header and
    the array's own memory) is never copied into one buffer."""
    size = sum(memoryview(p).nbytes for p in parts)
    return [tar_header(name, size), *parts, tar_padding(size)]


def tar_padding(size: int) -> bytes:
    """The zeros after a member of `size` bytes, up to a whole 512-byte block."""
    return bytes(-size % tarfile.BLOCKSIZE)


def tar_header(name: str, size: int) -> bytes:
    """The 512 bytes `tarfile` writes for this member (USTAR, mode 0644, owner 0, mtime 0), built directly:
    tarfile took 30 µs a member, a tenth of a short clip's whole cost (tools/bench_write.py)."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > 100 or not encoded.isascii() or size >= 8**11:  # tarfile splits or encodes these
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    head = encoded.ljust(100, b"\0") + _FIXED_MODE + b"%011o\0" % size + _FIXED_TIME
    checksum = sum(head) + _TAIL_SUM + 8 * 32
    return head + b"%06o\0 " % checksum + _TAIL


_FIXED_MODE = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid
_FIXED_TIME = b"00000000000\0"  # mtime
# type, link name, magic and version, owner names, device numbers, prefix, padding
_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 * 2 + 8 * 2 + 155 + 12)
_TAIL_SUM = sum(_TAIL)


_OUR_MEMBER = re.compile(rb"[0-9]{7}(_[A-Za-z0-9_-]*)?\.(spec\.npy|info\.msgpack|audio\.flac)")


def is_our_tar_start(head: bytes) -> bool:
    """Whether `head` begins a tar as the writer makes it: a first header with a valid checksum, our fixed mode,
    owner and mtime (tar_header) and a sample member's name. How a shard file left without its state record (a
    run killed between the two) is told from someone else's file of the same name."""
    if len(head) < tarfile.BLOCKSIZE:
        return False
    block = head[: tarfile.BLOCKSIZE]
    if not _checksum_ok(block):
        return False
    fixed = block[100:124] == _FIXED_MODE and block[136:148] == _FIXED_TIME and block[257:263] == b"ustar\x00"
    return fixed and _OUR_MEMBER.fullmatch(block[:100].rstrip(b"\0")) is not None


def _checksum_ok(header: bytes) -> bool:
    """A tar header's stored checksum is the sum of its bytes with the checksum field read as spaces."""
    stored = header[148:156].strip(b"\0 ") or b"0"
    return _OCTAL.fullmatch(stored) is not None and int(stored, 8) == sum(header[:148]) + 8 * 32 + sum(header[156:])


def tar_end(size: int) -> bytes:
    """What follows `size` bytes of members: the end-of-archive blocks and padding to a whole record,
    as tarfile writes them."""
    return bytes(2 * tarfile.BLOCKSIZE + (-(size + 2 * tarfile.BLOCKSIZE) % tarfile.RECORDSIZE))


def tar_members(data: Union[bytes, memoryview], url: str, whole: bool = True) -> Iterator[Dict[str, Any]]:
    """Members of a whole tar held in memory, as WebDataset file samples {fname, data, __url__}.

    Why not tarfile: its stream parser spent more time than building the batches (tools/bench.py
    profile); here a shard is one read, one sha256 call and zero-copy memoryview slices. Headers are
    checksummed, so a corrupt or truncated shard is an error, never silently short. `whole=False`: the
    members of one file cut out of a shard (read/access.py), which end where its last member does.
    """
    view = memoryview(data)
    for name, start, size, _ in tar_walk(view, whole):
        yield {"fname": name, "data": view[start : start + size], "__url__": url}


def tar_walk(view: memoryview, whole: bool = True) -> Iterator[Tuple[str, int, int, int]]:
    """(name, first data byte, data bytes, byte after its padding) of each file member, headers checked; the
    end of `view` must be the end-of-archive marker (`whole`) or the end of a member."""
    offset = 0
    while offset + 512 <= len(view):
        header = bytes(view[offset : offset + 512])
        if header == bytes(512):
            return  # end-of-archive marker
        if not _checksum_ok(header):
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
        offset = start + (size + 511) // 512 * 512
        if header[156:157] in (b"0", b"\0"):
            yield f"{prefix}/{name}" if prefix else name, start, size, offset
    if not whole and offset == len(view):
        return
    raise ValueError(f"tar ends at byte {len(view)} without its end-of-archive marker (truncated)")
