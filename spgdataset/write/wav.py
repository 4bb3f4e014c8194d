"""Plain 16-bit PCM WAV files read without libsndfile.

Most speech corpora are 16-bit WAV, and on a 2.5 s clip opening it through libsndfile cost more than reading
its samples: ~50 µs to read a header and ~110 µs to decode, against ~10 µs here (tools/bench_write.py). Only the
plain case is handled: a RIFF/WAVE file whose fmt chunk says PCM (tag 1, or WAVE_FORMAT_EXTENSIBLE with the PCM
subformat), 16 bits, block align = 2 x channels, at most MAX_CHANNELS channels, one data chunk, and whose data
chunk fits whole in the file in whole frames. Anything else (other sample formats, RF64, a truncated data chunk,
a second data chunk, a damaged header) returns None and goes to libsndfile, which decides and words the error; so
the samples here are the ones libsndfile would give, and a file libsndfile refuses is refused here too.

declared_frames() reads what any WAV's header promises, for the header stage to report a file shorter than that.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, Iterator, Optional, Tuple, cast

import numpy as np

from ..storage.local import open_regular

HEADER_BYTES = 4096  # a data chunk that starts later than this (large metadata chunks first) goes to libsndfile
PCM, EXTENSIBLE = 1, 0xFFFE
PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM after its first 2 bytes
MAX_CHANNELS = 1024  # libsndfile's limit (SF_MAX_CHANNELS): more is "Too many channels specified"
MAX_CHUNKS = 64  # chunks a walk past the data chunk looks at before it leaves the file to libsndfile
# after the data chunk, chunks libsndfile refuses (data, RIFF...) or reads its own way (a second fmt is not skipped,
# a PEAK of another size is refused): the fast path leaves such files to it
REFUSED_AFTER_DATA = {b"data", b"RIFF", b"RIFX", b"RF64", b"WAVE", b"fmt ", b"PEAK"}
FRAMED_FORMATS = {PCM, 3, 6, 7}  # PCM, IEEE float, A-law, mu-law: a data chunk of whole frames
UNKNOWN_LENGTH = (0, 0xFFFFFFFF)  # data sizes streaming recorders write before they know the length


def wav_layout(head: bytes) -> Optional[Tuple[int, int, int, int]]:
    """(channels, sample rate, data offset, data bytes) of a plain 16-bit PCM WAV from its first bytes, or
    None. The data chunk's size is as its header says: the caller checks it against the file."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position, fmt = 12, None
    while position + 8 <= len(head):
        chunk, size = head[position : position + 4], struct.unpack_from("<I", head, position + 4)[0]
        body = position + 8
        if chunk == b"fmt ":
            fmt = _pcm16_format(head[body : body + size]) if body + size <= len(head) else None
            if fmt is None:
                return None
        elif chunk == b"data":
            if fmt is None:
                return None
            channels, rate = fmt
            return channels, rate, body, size
        position = body + size + (size & 1)  # chunks are padded to an even length
    return None


def _pcm16_format(fmt: bytes) -> Optional[Tuple[int, int]]:
    """(channels, rate) when the fmt chunk describes 16-bit integer PCM, else None."""
    if len(fmt) < 16:
        return None
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == EXTENSIBLE:
        if len(fmt) < 40 or struct.unpack_from("<H", fmt, 24)[0] != PCM or fmt[26:40] != PCM_GUID_TAIL:
            return None
    elif tag != PCM:
        return None
    if bits != 16 or not 1 <= channels <= MAX_CHANNELS or rate < 1 or block_align != 2 * channels:
        return None
    return channels, rate


def probe_wav(path: str) -> Optional[Tuple[int, int]]:
    """(frames, sample rate) of a plain 16-bit PCM WAV from its header, or None (ask libsndfile)."""
    with open_regular(path, buffering=0) as stream:
        found = _plain_layout(stream)
    if found is None:
        return None
    (channels, rate, _, size), _ = found
    return size // (2 * channels), rate


def read_wav(path: str) -> Optional[Tuple[np.ndarray, int]]:
    """(int16 samples of shape (frames, channels), sample rate) of a plain 16-bit PCM WAV, or None."""
    with open_regular(path, buffering=0) as stream:
        found = _plain_layout(stream)
        if found is None:
            return None
        (channels, rate, offset, size), head = found
        data = bytearray(size)
        have = max(0, min(len(head) - offset, size))
        data[:have] = head[offset : offset + have]
        view = memoryview(data)
        raw = cast(io.RawIOBase, stream)  # buffering=0: the file itself, whose readinto takes what is there
        while have < size:
            got = raw.readinto(view[have:])
            if not got:  # the file shrank while being read
                return None
            have += got
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False).reshape(-1, channels), rate


def _plain_layout(stream: BinaryIO) -> Optional[Tuple[Tuple[int, int, int, int], bytes]]:
    """(wav_layout, the bytes read) when the file is a plain 16-bit WAV whose data chunk lies whole in the file
    in whole frames, and is its only one; else None. The stream is left just after the bytes read."""
    file_size = os.fstat(stream.fileno()).st_size
    head = stream.read(min(HEADER_BYTES, file_size))
    layout = wav_layout(head)
    if layout is None:
        return None
    channels, _, offset, size = layout
    if offset + size > file_size or size % (2 * channels):
        return None
    if offset + size + 4 < file_size:  # more after the data chunk (rare): libsndfile walks on, so look too
        if not _harmless_tail(stream, offset + size, file_size):
            return None
        stream.seek(len(head))
    return layout, head


def _harmless_tail(stream: BinaryIO, position: int, file_size: int) -> bool:
    """Whether libsndfile reads past what follows the data chunk: not a second data chunk (it refuses the file, or
    takes the second one's length), not a second RIFF header (two files end to end: refused), not a marker it
    resynchronises on byte by byte (a non-text id at a place not a multiple of 4). Other chunks it skips, and a
    non-text id at a multiple of 4 ends its walk (zero padding)."""
    for count, (where, name, _) in enumerate(_chunks(stream, position, file_size)):
        if name in REFUSED_AFTER_DATA or count >= MAX_CHUNKS:
            return False
        if not _text(name):
            return where % 4 == 0
    return True


def _chunks(stream: BinaryIO, position: int, file_size: int) -> Iterator[Tuple[int, bytes, int]]:
    """(position, id, size) of the chunks from `position` on, read by seeking, while libsndfile would read one
    (5 bytes or more left); each next one after the size and the pad byte of an odd size."""
    while position + 4 < file_size:
        stream.seek(position)
        header = stream.read(8).ljust(8, b"\0")
        size = struct.unpack_from("<I", header, 4)[0]
        yield position, header[:4], size
        position += 8 + size + (size & 1)


def _text(name: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in name)


def declared_frames(path: str) -> Optional[int]:
    """The frames a RIFF WAV's header promises (data chunk bytes over bytes per frame), or None: not such a WAV,
    a compressed format (frames are not bytes over a constant), or a length left unknown (0 or 0xFFFFFFFF, which
    streaming recorders write until they close the file). A truncated file holds fewer: libsndfile reads those."""
    with open_regular(path, buffering=0) as stream:
        file_size = os.fstat(stream.fileno()).st_size
        head = stream.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        frame_bytes = None
        for count, (where, name, size) in enumerate(_chunks(stream, 12, file_size)):
            if name == b"fmt " and frame_bytes is None:
                stream.seek(where + 8)
                frame_bytes = _frame_bytes(stream.read(min(size, 40)))
            elif name == b"data" or count >= MAX_CHUNKS:
                return size // frame_bytes if name == b"data" and frame_bytes and size not in UNKNOWN_LENGTH else None
    return None


def _frame_bytes(fmt: bytes) -> Optional[int]:
    """Bytes per frame as libsndfile counts them (whole bytes per sample x channels) for the formats stored one
    frame after another: PCM, float, A-law, mu-law, plain or extensible; None for the rest."""
    if len(fmt) < 16:
        return None
    tag, channels, _, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]
    return (bits + 7) // 8 * channels if tag in FRAMED_FORMATS and bits and channels else None
