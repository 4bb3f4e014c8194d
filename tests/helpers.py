"""Helpers shared by the tests: small audio files, CLI runs, and a writable copy of a shard folder with the
edits an attacker (or an unlucky disk) would make."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import msgpack
import numpy as np
import soundfile as sf

SR = 16000
NO_MASKS = {"spectrogram": False, "masks": []}
CLI = [sys.executable, "-m", "spgdataset.write.cli"]


def noise(seconds: float, rate: int = SR, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


def wav(path: Path, seconds: float = 2.5, rate: int = SR, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(seconds, rate, seed), rate, subtype="PCM_16")
    return path


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value), encoding="utf-8")
    return str(path)


def run_cli(args: List[Any], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def report(result) -> Dict[str, Dict[str, str]]:
    """{path: report row} of a write_shards result."""
    return {row["path"]: row for row in result.manifest["report"]["files"]}


def index_rows(folder) -> List[Dict[str, Any]]:
    """The file index of a shard folder as rows, shard numbers replaced by shard names."""
    from spgdataset.format.index import decode

    folder = Path(folder)
    names = [s["name"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]
    index = decode((folder / "index.bin").read_bytes())
    return [dict(row, shard=names[row["shard"]]) for row in (index.row(i) for i in range(index.files))]


def stored_paths(folder) -> List[str]:
    return sorted(row["path"] for row in index_rows(folder))


def strict_json(text: str) -> Any:
    """json.loads that refuses NaN/Infinity (what other languages' parsers do)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


class Shards:
    """A writable copy of a shard folder, with the edits an attacker (or an unlucky disk) would make."""

    def __init__(self, src: str, dst: Path) -> None:
        shutil.copytree(src, dst)
        self.folder = dst

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def manifest(self) -> Dict[str, Any]:
        return json.loads((self.folder / "manifest.json").read_text())

    def save_manifest(self, manifest: Dict[str, Any]) -> None:
        (self.folder / "manifest.json").write_text(json.dumps(manifest))

    def edit_manifest(self, edit: Callable[[Dict[str, Any]], None]) -> None:
        manifest = self.manifest
        edit(manifest)
        self.save_manifest(manifest)

    @property
    def index_name(self) -> str:
        return self.manifest["index"]

    @property
    def rows(self) -> List[Dict[str, Any]]:
        if self.manifest["format_version"] == 1:
            return msgpack.unpackb((self.folder / "index.msgpack").read_bytes(), raw=False)
        return index_rows(self.folder)

    def save_rows(self, rows: List[Dict[str, Any]], consistent: bool = True) -> None:
        """Write the index (in the folder's format); with `consistent`, also make the manifest agree with it
        (digest, file and frame counts), so that only a check against the shards themselves can find the edit."""
        from spgdataset.format.index import encode

        names = [s["name"] for s in self.manifest["shards"]]
        if self.manifest["format_version"] == 1:
            data = msgpack.packb(rows, use_bin_type=True)
        else:
            data = encode(rows, [names.index(r["shard"]) for r in rows])
        (self.folder / self.index_name).write_bytes(data)
        if consistent:
            manifest = self.manifest
            manifest["index_sha256"], manifest["index_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
            for shard in manifest["shards"]:
                mine = [r for r in rows if r["shard"] == shard["name"]]
                shard["files"], shard["frames"] = len(mine), sum(r["frames"] for r in mine)
            self.save_manifest(manifest)

    def as_format_1(self) -> None:
        """Turn the copy into a shard set as spg-shard 0.1 wrote it: format 1, the index as msgpack rows."""
        data = msgpack.packb(self.rows, use_bin_type=True)
        (self.folder / "index.msgpack").write_bytes(data)
        (self.folder / "index.bin").unlink()
        manifest = self.manifest
        manifest.update(format_version=1, index="index.msgpack", index_sha256=hashlib.sha256(data).hexdigest(),
                        index_bytes=len(data))
        manifest.pop("free_form", None)
        self.save_manifest(manifest)

    def members(self, name: str) -> List[Tuple[str, bytes]]:
        with tarfile.open(self.folder / name) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]

    def rewrite(self, name: str, members: List[Tuple[str, bytes]], update_manifest: bool = True) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        (self.folder / name).write_bytes(buf.getvalue())
        if update_manifest:
            def fix(manifest):
                shard = next(s for s in manifest["shards"] if s["name"] == name)
                shard["bytes"], shard["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
            self.edit_manifest(fix)


def epoch(ds, epoch_number: int = 0) -> List[Tuple[str, int]]:
    ds.set_epoch(epoch_number)
    out = []
    for item in ds:
        keys = item["key"] if isinstance(item["key"], list) else [item["key"]]
        out += list(zip(keys, np.atleast_1d(item["start"].numpy()).tolist()))
    return out


# ---------------------------------------------------------------- 3. paths that leave the audio root
