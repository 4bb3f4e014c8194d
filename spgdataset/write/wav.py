"""Plain 16-bit PCM WAV files read without libsndfile.

Most speech corpora are 16-bit WAV, and on a 2.5 s clip opening it through libsndfile cost more than reading
its samples: ~50 µs to read a header and ~110 µs to decode, against ~10 µs here (tools/bench_write.py). Only the
plain case is handled: a RIFF/WAVE file whose fmt chunk says PCM (tag 1, or WAVE_FORMAT_EXTENSIBLE with the PCM
subformat), 16 bits, block align = 2 x channels, and whose data chunk fits whole in the file in whole frames.
Anything else (other sample formats, RF64, a truncated data chunk, a damaged header) returns None and goes to
libsndfile, which decides and words the error; so the samples here are the ones libsndfile would give.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Optional, Tuple

import numpy as np

from ..storage.local import open_regular

HEADER_BYTES = 4096  # a data chunk that starts later than this (large metadata chunks first) goes to libsndfile
PCM, EXTENSIBLE = 1, 0xFFFE
PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")  # KSDATAFORMAT_SUBTYPE_PCM after its first 2 bytes


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
    if bits != 16 or channels < 1 or rate < 1 or block_align != 2 * channels:
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
        while have < size:
            got = stream.readinto(view[have:])
            if not got:  # the file shrank while being read
                return None
            have += got
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False).reshape(-1, channels), rate


def _plain_layout(stream: BinaryIO) -> Optional[Tuple[Tuple[int, int, int, int], bytes]]:
    """(wav_layout, the bytes read) when the file is a plain 16-bit WAV whose data chunk lies whole in the file
    in whole frames; else None."""
    file_size = os.fstat(stream.fileno()).st_size
    head = stream.read(min(HEADER_BYTES, file_size))
    layout = wav_layout(head)
    if layout is None:
        return None
    channels, _, offset, size = layout
    if offset + size > file_size or size % (2 * channels):
        return None
    return layout, head
