"""The reference call: `SpectrogramDataset(audio_root, spectrograms_root, index_root, metadata_json_path=None,
sample_rate=16000, ...)` turns an audio folder into shards once, then streams them like any shard set.

How the reference's folders map onto a shard set: the shards, `manifest.json` and `index.bin` go to
`spectrograms_root` (a shard set is one folder, so that it can be copied or uploaded whole); `index_root`
holds `build.json`, the fingerprint of the inputs that built them (None: `spectrograms_root`). A later call
with the same audio, metadata.json and parameters finds the same fingerprint and opens the shards without
writing anything; when they changed, the shards are written again (spg-shard's own resume then keeps what it
can). The fingerprint is of content, not of times: metadata.json's bytes, the feature parameters, and per
audio file its name, size and the sha256 of its first, middle and last 64 KiB. The record also says whether the
shards hold the audio: `output_configuration={"audio": True}` writes it (spg-shard's --with-audio), so such a call
rebuilds shards written without it, and a call not asking for audio streams shards that hold it as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

from ..errors import SpgError
from ..format.features import FeatureConfig
from ..format.names import BUILD_RECORD, FORMAT_VERSION, MANIFEST_NAME
from ..storage.local import open_regular, write_bytes_atomic
from ..version import __version__

if TYPE_CHECKING:
    from .options import DatasetArguments

# The reference's positions after audio_root, and its defaults for the feature parameters it names.
POSITIONS = ("spectrograms_root", "index_root", "metadata_json_path", "sample_rate", "window_size_sec",
             "window_offset_sec", "window_content_ratio", "hop_length", "n_mels", "n_fft", "normalize", "dtype",
             "split", "output_configuration", "max_memory_cache", "num_workers")
FEATURE_DEFAULTS = {"sample_rate": 16000, "hop_length": 160, "n_mels": 80, "n_fft": 400}
SAMPLE = 64 << 10


def is_reference_call(positional: Sequence[Any], args: "DatasetArguments") -> bool:
    return bool(positional) or any(value is not None for value in (args.audio_root, args.spectrograms_root,
                                                                   args.index_root, args.metadata_json_path))


def take_positions(source: Any, positional: Sequence[Any], args: "DatasetArguments",
                   defaults: Dict[str, Any]) -> "DatasetArguments":
    """`args` with the reference's positional arguments in their places, as Python would bind them."""
    if len(positional) > len(POSITIONS):
        raise TypeError(f"SpectrogramDataset() takes at most {len(POSITIONS) + 1} positional arguments "
                        f"(the reference call), {len(positional) + 1} were given")
    given: Dict[str, Any] = {}
    if source is not None:
        if args.audio_root is not None:
            raise TypeError("SpectrogramDataset() got multiple values for argument 'audio_root'")
        given["audio_root"] = source
    for name, value in zip(POSITIONS, positional):
        mine = getattr(args, name)
        if mine is not None and mine != defaults.get(name):
            raise TypeError(f"SpectrogramDataset() got multiple values for argument {name!r}")
        given[name] = value
    return dataclasses.replace(args, **given)


def build(args: "DatasetArguments", progress: bool = True) -> Tuple[str, "DatasetArguments"]:
    """Shards of `args.audio_root` in `args.spectrograms_root`, written unless the build record says the ones
    there are current. Returns the shard folder, and `args` with the feature parameters the shards fix.

    Current means: the inputs' fingerprint is the recorded one, and manifest.json is the very file that build
    wrote (its sha256): a shard folder replaced by another corpus's is written again, not streamed. Every rank of
    a DDP job makes this call at once: one writes, the others wait for it and find its shards current.
    """
    from ..write.job import write_shards  # the reader imports the writer only for this call

    audio_root, shards = args.audio_root, args.spectrograms_root
    if shards is None:
        raise TypeError("the reference call needs spectrograms_root (where the shards go)")
    if audio_root is None:
        raise TypeError("the reference call needs audio_root (the folder of audio files)")
    index_root = args.index_root or shards
    metadata = args.metadata_json_path
    given: Dict[str, Any] = {name: getattr(args, name) or default for name, default in FEATURE_DEFAULTS.items()}
    features = FeatureConfig(**given)
    fingerprint = inputs_fingerprint(str(audio_root), None if metadata is None else str(metadata), features)
    record = os.path.join(str(index_root), BUILD_RECORD)
    manifest = os.path.join(str(shards), MANIFEST_NAME)
    recorded = _recorded(record)
    wants_audio = bool((args.output_configuration or {}).get("audio"))
    stale = _staleness(recorded, fingerprint, _sha256_of(manifest), wants_audio)
    if stale:
        if progress:
            print(f"SpectrogramDataset: writing the shards of {audio_root} into {shards}: {stale}", file=sys.stderr)
        # audio once stored stays stored: a call without it must not undo what a call with it built
        with_audio = wants_audio or bool(recorded and recorded.get("with_audio"))
        write_shards(audio_root, metadata, shards, features=features, with_audio=with_audio, overwrite=True,
                     progress=progress, wait=True)
        os.makedirs(str(index_root), exist_ok=True)
        write_bytes_atomic(record, json.dumps({"fingerprint": fingerprint, "manifest_sha256": _sha256_of(manifest),
                                               "with_audio": with_audio, "shards": os.path.abspath(str(shards)),
                                               "spgdataset": __version__}, indent=1).encode())
    # the shards fix these now; as given they are only checks
    return str(shards), dataclasses.replace(args, **{name: getattr(features, name) for name in FEATURE_DEFAULTS})


def _staleness(recorded: Optional[Dict[str, Any]], fingerprint: str, manifest_sha256: Optional[str],
               wants_audio: bool) -> str:
    """Why the shards must be written (again), or "" when the record says they are current (and hold audio when
    `wants_audio`; shards with audio serve a call without it as they are)."""
    if manifest_sha256 is None:
        return "no shard set there yet"
    if recorded is None:
        return "no build record of them (index_root/build.json)"
    if recorded.get("fingerprint") != fingerprint:
        return "the audio, metadata.json or feature parameters changed since they were built"
    if recorded.get("manifest_sha256") != manifest_sha256:
        return "its manifest.json is not the one this build wrote (replaced, or written before 0.3)"
    if wants_audio and recorded.get("with_audio") is not True:
        return "output_configuration asks for audio, and they were built without it"
    return ""


def _recorded(path: str) -> Optional[Dict[str, Any]]:
    """The build record; None when there is none. A file of that name that is not one is someone else's: it is
    refused rather than overwritten."""
    try:
        with open_regular(path) as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SpgError(f"{path}: cannot read the build record: {exc.strerror or exc}") from None
    try:
        found = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        found = None
    if not (isinstance(found, dict) and "fingerprint" in found and "spgdataset" in found):
        raise SpgError(f"{path}: is not spgdataset's build record, and it is not overwritten; give index_root a "
                       "folder of its own")
    return found


def _sha256_of(path: str) -> Optional[str]:
    try:
        with open_regular(path) as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def inputs_fingerprint(audio_root: str, metadata_path: Optional[str], features: FeatureConfig) -> str:
    """What the shards are made of, without decoding any audio (see the module docstring)."""
    from ..write.inputs import collect_inputs

    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, features.to_dict()]).encode())
    if metadata_path is not None:
        try:
            with open(metadata_path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        except OSError as exc:
            raise SpgError(f"{metadata_path}: cannot read metadata: {exc.strerror or exc}") from None
    entries, rejected = collect_inputs(audio_root, metadata_path)
    for entry in entries:
        digest.update(f"{entry.path}\0{_sampled_digest(entry.abspath)}\0".encode())
    digest.update(json.dumps(sorted(str(bad) for bad in rejected)).encode())
    return digest.hexdigest()


def _sampled_digest(path: str) -> str:
    """Size and sha256 of the first, middle and last 64 KiB of a file ("missing" when it cannot be read)."""
    try:
        with open_regular(path) as f:  # a FIFO named like audio is not waited on
            size = os.fstat(f.fileno()).st_size
            digest = hashlib.sha256(str(size).encode())
            for offset in sorted({0, max(size // 2 - SAMPLE // 2, 0), max(size - SAMPLE, 0)}):
                f.seek(offset)
                digest.update(f.read(SAMPLE))
        return digest.hexdigest()
    except OSError:
        return "missing"
