"""spg-inspect: the shard set as numbers (which must be the manifest's and the dataset's) and as pictures;
and spg-shard --dry-run, which must report what a run reports and write nothing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from spgdataset import SpectrogramDataset, write_shards
from spgdataset.demo import make_corpus
from spgdataset.show.cli import main as inspect_main
from tests.helpers import index_rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio")
    meta = make_corpus(root, total_seconds=30, seed=8, min_seconds=2.5, max_seconds=4)
    metadata = json.loads(Path(meta).read_text())
    (root / "broken.wav").write_bytes(b"RIFF not audio" * 30)
    metadata["broken.wav"] = {}
    metadata[sorted(k for k in metadata if k != "broken.wav")[0]]["intervals"]["speech"].append([5, 3])  # reversed
    Path(meta).write_text(json.dumps(metadata))
    out = tmp_path_factory.mktemp("shards")
    write_shards(root, meta, out, max_shard_files=4, progress=False)
    return root, meta, str(out)


def inspect(capsys, *args) -> str:
    with pytest.raises(SystemExit) as done:
        inspect_main([*map(str, args)])
    captured = capsys.readouterr()
    assert done.value.code == 0, captured.err
    return captured.out


def test_the_summary_gives_the_manifests_numbers(corpus, capsys):
    _, _, shards = corpus
    manifest = json.loads(Path(shards, "manifest.json").read_text())
    text = inspect(capsys, shards, "--split", "0.5,0.5", "--split-key", "speaker", "--label", "speaker")
    totals = manifest["totals"]
    assert f"{totals['files']:,} files, {totals['hours']:.2f} h, {totals['shards']} shards" in text
    parts = [SpectrogramDataset(shards, split=(0.5, 0.5), subset=s, split_key="speaker") for s in (0, 1)]
    for s, ds in enumerate(parts):
        assert f"subset {s}: {len(ds.selection.files):,} files" in text and f"{ds.num_windows():,} windows" in text
    speakers = [r["metadata"].get("speaker") for r in index_rows(shards)]
    for value in set(speakers):
        assert f"{value!r} {speakers.count(value):,}" in text
    assert f"{manifest['report']['counts']['bad']} bad" in text and "broken.wav" in text


@pytest.mark.parametrize("choice,files", [(["--random", "3", "--windows"], 3), (["--key"], 1), (["--path"], 1)])
def test_plot_writes_a_png_of_the_expected_size(corpus, capsys, tmp_path, choice, files):
    _, _, shards = corpus
    if choice in (["--key"], ["--path"]):
        choice = choice + [index_rows(shards)[2][choice[0][2:]]]
    out = tmp_path / "p.png"
    text = inspect(capsys, shards, "--plot", out, *choice)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1000, 300 * files), text


@pytest.mark.slow
def test_plot_without_matplotlib_says_how_to_get_it(corpus, tmp_path):
    _, _, shards = corpus
    code = ("import sys; sys.modules['matplotlib'] = None; from spgdataset.show.cli import main; "
            f"main([{shards!r}, '--plot', {str(tmp_path / 'x.png')!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and 'pip install "spgdataset[plot]"' in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "x.png").exists()


def test_usage_mistakes_exit_with_2(corpus, capsys):
    _, _, shards = corpus
    for args in (["--windows"], ["--split", "a,b"], ["--random", "2", "--key", "x", "--plot", "p.png"]):
        with pytest.raises(SystemExit) as done:
            inspect_main([shards, *args])
        assert done.value.code == 2
    with pytest.raises(SystemExit) as done:
        inspect_main([shards, "--plot", "p.png", "--key", "no-such-key"])
    assert done.value.code == 1 and "no file with key 'no-such-key'" in capsys.readouterr().err


def test_dry_run_reports_what_a_run_reports_and_writes_nothing(corpus, tmp_path):
    root, meta, shards = corpus
    manifest = json.loads(Path(shards, "manifest.json").read_text())
    dry = write_shards(root, meta, tmp_path / "never", max_shard_files=4, progress=False, dry_run=True)
    assert not (tmp_path / "never").exists()
    assert dry.dry_run and dry.manifest is None
    assert dry.rejected == manifest["report"]["files"]  # the same problems, decode-time ones included
    assert dry.expected_bytes == sum(s["bytes"] for s in manifest["shards"])
    assert dry.files_processed == manifest["totals"]["files"] + sum(
        1 for r in dry.rejected if r["kind"] == "bad" and "reversed" not in r["problem"]
        and "unreadable" not in r["problem"])
