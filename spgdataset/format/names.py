"""The names of the shard format: files, members, sample keys.

A shard `shard-000012.tar` is a plain tar (WebDataset layout) holding, per audio file, members
`{key}.spec.npy` (C-ordered (n_mels, T) log-mel), `{key}.info.msgpack` (frames, intervals, metadata)
and with --with-audio `{key}.audio.flac`. Beside the shards: `manifest.json` and the file index
(`index.bin`, format/index.py). Here too what names files on both sides of the format: the audio extensions
a writer takes (and a reader recognises in a folder given by mistake), and sha256 digests (a shard's name in the
S3 cache).
"""

from __future__ import annotations

import os
import re
from typing import Any

FORMAT_VERSION = 2  # 2: the file index as columns (index.bin); 1: as msgpack rows (index.msgpack), still read
SEGMENTED_FORMAT_VERSION = 3  # 2 plus long files in segments: readers that cannot place them must refuse the set
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.bin"
ROWS_INDEX_NAME = "index.msgpack"  # format 1
BUILD_RECORD = "build.json"  # the reference call's record of the inputs and the manifest it built (read/reference.py)
STATE_DIR = ".spg-state"  # per-shard records of a run in progress; a reader ignores it
SPEC, INFO, AUDIO = "spec.npy", "info.msgpack", "audio.flac"
AUDIO_EXTENSIONS = {
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
    ".au", ".snd", ".caf", ".w64", ".rf64", ".sd2", ".voc", ".wv",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_key(number: int, path: str) -> str:
    """Unique, tar- and WebDataset-safe key: running number + readable slug of the path (no dots)."""
    stem = os.path.splitext(path)[0]
    slug = _UNSAFE.sub("_", stem).strip("_")[-60:]
    return f"{number:07d}_{slug}" if slug else f"{number:07d}"


def is_sha256(value: Any) -> bool:
    """64 lowercase hex digits: a digest from a manifest, safe to use as a file name."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None
