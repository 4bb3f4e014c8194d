"""Shared fixtures: small generated corpora (spgdataset.demo) and runs of the shard writer over them.

Everything here is real: WAV files on disk, write_shards() in this process (workers=1 unless a test asks
for more), and the CLI in subprocesses. Corpora are small (tens of seconds) so the suite stays fast;
session scope shares the runs that several tests only read.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

from spgdataset.demo import make_corpus
from spgdataset.write.job import write_shards
from tests.helpers import index_rows

# --------------------------------------------------------------------------- helpers (as fixtures)


def _run_cli(args: Sequence[str], timeout: float = 120, cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """`python -m spgdataset.write.cli ARGS` in a fresh interpreter, text output captured."""
    return subprocess.run([sys.executable, "-m", "spgdataset.write.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def _read_tar(path) -> List[tuple]:
    """[(member name, bytes), ...] in tar order."""
    with tarfile.open(path, "r") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _samples_of(out_dir) -> Dict[str, Dict[str, bytes]]:
    """{sample key: {member suffix: bytes}} over every shard-*.tar in `out_dir`, plus '__shard__'."""
    samples: Dict[str, Dict[str, bytes]] = {}
    for shard in sorted(Path(out_dir).glob("shard-*.tar")):
        for name, data in _read_tar(shard):
            key, _, suffix = name.partition(".")
            sample = samples.setdefault(key, {"__shard__": shard.name})
            assert suffix not in sample, f"{name} twice"
            sample[suffix] = data
    return samples


def _output_files(out_dir) -> Dict[str, bytes]:
    """The published output: shard-*.tar, manifest.json, index.bin -> bytes."""
    out = Path(out_dir)
    names = [p.name for p in out.glob("shard-*.tar")] + [n for n in ("manifest.json", "index.bin")
                                                         if (out / n).exists()]
    return {name: (out / name).read_bytes() for name in sorted(names)}


class Helpers:
    run_cli = staticmethod(_run_cli)
    read_tar = staticmethod(_read_tar)
    samples_of = staticmethod(_samples_of)
    output_files = staticmethod(_output_files)

    @staticmethod
    def manifest(out_dir) -> dict:
        return json.loads((Path(out_dir) / "manifest.json").read_text(encoding="utf-8"))

    @staticmethod
    def index(out_dir) -> list:
        return index_rows(out_dir)

    @staticmethod
    def npy(data: bytes) -> np.ndarray:
        return np.load(io.BytesIO(data), allow_pickle=False)


@pytest.fixture(scope="session")
def helpers() -> Helpers:
    return Helpers()


# --------------------------------------------------------------------------- corpora


@pytest.fixture(scope="session")
def corpus16k(tmp_path_factory):
    """About 40 s of 16 kHz mono 16-bit WAV in ~9 files, with speech/noise intervals and speaker/gender."""
    root = tmp_path_factory.mktemp("corpus16k")
    meta = make_corpus(root, total_seconds=40, seed=11, rates=(16000,), min_seconds=2, max_seconds=7)
    return str(root), meta


@pytest.fixture(scope="session")
def run16k(corpus16k, tmp_path_factory):
    """write_shards over corpus16k, one worker, three files per shard."""
    root, meta = corpus16k
    out = tmp_path_factory.mktemp("run16k") / "out"
    result = write_shards(root, meta, out, workers=1, max_shard_files=3, progress=False)
    assert result.manifest is not None
    return str(out), result


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory):
    """~40 s over 44.1 kHz, 8 kHz, 32 kHz and 16 kHz files, every third one stereo (all 16-bit WAV).

    Rates cycle with period 4 and stereo with period 3, so every (rate, stereo) pair occurs.
    """
    root = tmp_path_factory.mktemp("mixed")
    meta = make_corpus(root, total_seconds=40, seed=7, rates=(44100, 8000, 32000, 16000), min_seconds=1,
                       max_seconds=2.5, stereo_every=3)
    return str(root), meta


@pytest.fixture(scope="session")
def mixed_run(mixed_corpus, tmp_path_factory):
    """write_shards over mixed_corpus with --with-audio, one worker, four files per shard."""
    root, meta = mixed_corpus
    out = tmp_path_factory.mktemp("mixed_run") / "out"
    result = write_shards(root, meta, out, workers=1, max_shard_files=4, with_audio=True, progress=False)
    assert result.manifest is not None
    return str(out), result


# --------------------------------------------------------------------------- an S3 server (tests/s3server.py)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's standalone server on 127.0.0.1, one per test module, with bucket `spg-test`."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    from tests.s3server import moto_fixture

    yield from moto_fixture(tmp_path_factory)


@pytest.fixture
def aws(moto, monkeypatch):
    """This process pointed at the moto server as user `spg`; `aws(user=..., endpoint=...)` switches."""
    from tests.s3server import aws_fixture

    yield from aws_fixture(moto, monkeypatch)
