"""The reference user's first hour (issue "The reference user's first hour"): each thing that surprised a user in
their first hour with the package, as it should be now: the reference call stores audio when asked, a split
that is not fractions summing to 1 is an error, an empty subset says where the split's units went, the router
refuses labels of different keys, --quiet is quiet, --config takes a shipped name, the router and a linear
dataset describe themselves, every plotted file has its time axis, and the version is the README's."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

import spgdataset
from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter, write_shards
from spgdataset.demo import make_corpus
from spgdataset.format import features as feature_configs
from spgdataset.format.features import FeatureConfig
from spgdataset.rules.splits import normalize_split, subset_of
from spgdataset.show import plot
from spgdataset.show.cli import main as inspect_main
from spgdataset.write import cli as shard_cli
from spgdataset.write import job
from tests.helpers import index_rows, wav, write_json

REPO = Path(__file__).resolve().parent.parent.parent
SPLIT = (0.8, 0.1, 0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Tuple[Path, str]:
    root = tmp_path_factory.mktemp("audio")
    return root, make_corpus(root, total_seconds=24, seed=8, min_seconds=2.5, max_seconds=4)


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory) -> str:
    root, meta = corpus
    out = tmp_path_factory.mktemp("shards")
    write_shards(root, meta, out, max_shard_files=3, workers=1, progress=False)
    return str(out)


# ---------------------------------------------------------------- 1. the reference call stores audio when asked


def test_the_reference_call_stores_audio_when_asked(tmp_path):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=8, seed=3, min_seconds=2.5, max_seconds=3)
    ds = SpectrogramDataset(root, str(tmp_path / "spec"), str(tmp_path / "idx"), meta, shuffle=False,
                            output_configuration={"audio": True, "masks": ["speech"]})
    item = next(iter(ds))
    assert item["audio"].shape[-1] > 0
    assert json.loads((tmp_path / "spec" / "manifest.json").read_text())["with_audio"] is True
    assert json.loads((tmp_path / "idx" / "build.json").read_text())["with_audio"] is True


def test_asking_for_audio_rebuilds_shards_without_it_and_not_asking_keeps_them(tmp_path, monkeypatch, capsys):
    root = tmp_path / "audio"
    meta = make_corpus(root, total_seconds=8, seed=3, min_seconds=2.5, max_seconds=3)
    folders = [str(tmp_path / "spec"), str(tmp_path / "idx")]
    SpectrogramDataset(root, *folders, meta)
    assert json.loads((tmp_path / "spec" / "manifest.json").read_text())["with_audio"] is False
    capsys.readouterr()
    with_audio = SpectrogramDataset(root, *folders, meta, output_configuration={"audio": True})
    assert "asks for audio, and they were built without it" in capsys.readouterr().err
    assert with_audio.config.outputs.audio and "audio" in next(iter(with_audio))

    def refuse(*args, **kwargs):
        raise AssertionError("the shards were written again")

    monkeypatch.setattr(job, "write_shards", refuse)
    for outputs in (None, {"audio": True}, {"audio": False}):  # shards with audio serve every call as they are
        assert SpectrogramDataset(root, *folders, meta, output_configuration=outputs).num_windows() > 0


# ---------------------------------------------------------------- 2. a split is fractions that sum to 1


@pytest.mark.parametrize("split, needle", [
    ((0.8, 0.3, 0.1), r"split \(0.8, 0.3, 0.1\) sums to 1.2, not 1.*\(0.6667, 0.25, 0.08333\)"),
    ((80, 10, 10), r"split \(80, 10, 10\) sums to 100, not 1.*\(0.8, 0.1, 0.1\)"),
    ((1.0, math.nan), r"split \(1.0, nan\): nan is not a fraction"),
    ((0.5, -0.5, 1.0), r"-0.5 is not a fraction"),
    ((0.5,), r"sums to 0.5, not 1"),
    ((0, 0), r"sums to 0"),
    ((), "split must be a sequence of fractions")])
def test_a_split_that_is_not_fractions_summing_to_1_is_an_error(shards, split, needle):
    with pytest.raises(ValueError, match=needle):
        SpectrogramDataset(shards, split=split, subset=0)
    with pytest.raises(ValueError, match=needle):
        normalize_split(split)


@pytest.mark.parametrize("split", [(1,), (1, 0), (0.8, 0.1, 0.1), (0.7, 0.2, 0.1), (1 / 3,) * 3, (0.333,) * 3])
def test_fractions_that_sum_to_1_within_rounding_are_taken(split):
    bounds = normalize_split(split)
    assert bounds[-1] == 1.0 and len(bounds) == len(split)


def test_spg_inspect_refuses_the_same_splits_naming_split(shards, capsys):
    with pytest.raises(SystemExit) as done:
        inspect_main([shards, "--split", "0.8,0.3,0.1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert done.value.code == 2 and "--split '0.8,0.3,0.1'" in last and "sums to 1.2" in last, last


# ---------------------------------------------------------------- 3. an empty subset says where the units went


def speaker_subsets(shards: str) -> List[int]:
    """Distinct speakers per subset of SPLIT, from the split rule itself."""
    speakers = {row["metadata"]["speaker"] for row in index_rows(shards)}
    bounds = normalize_split(SPLIT)
    placed = [subset_of("", {"speaker": s}, bounds, "speaker") for s in sorted(speakers)]
    return [placed.count(s) for s in range(len(SPLIT))]


def test_an_empty_subset_warns_how_many_split_key_values_went_where(shards):
    counts = speaker_subsets(shards)
    empty = counts.index(0)  # six speakers over (0.8, 0.1, 0.1): one subset gets none
    with pytest.warns(UserWarning) as caught:
        SpectrogramDataset(shards, split=SPLIT, subset=empty, split_key="speaker")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    spread = f"{sum(counts)} distinct 'speaker' values: {counts[0]} in subset 0, {counts[1]} in 1, {counts[2]} in 2"
    assert f"subset {empty} of split {SPLIT} has 0 files" in messages[0] and spread in messages[0], messages[0]
    assert f"with so few values a split of {SPLIT} leaves subset {empty} empty" in messages[0], messages[0]


def test_spg_inspect_flags_the_empty_subset(shards, capsys):
    counts = speaker_subsets(shards)
    with pytest.raises(SystemExit) as done:
        inspect_main([shards, "--split", ",".join(map(str, SPLIT)), "--split-key", "speaker"])
    text = capsys.readouterr().out
    assert done.value.code == 0
    rows = {line.split(":")[0].strip(): line for line in text.splitlines() if line.strip().startswith("subset ")}
    for s, n in enumerate(counts):
        assert ("EMPTY: no file" in rows[f"subset {s}"]) == (n == 0), rows
    assert f"{sum(counts)} distinct 'speaker' values: {counts[0]} in subset 0" in text, text


# ---------------------------------------------------------------- 4. the router refuses labels of different keys


def test_the_router_refuses_datasets_labelled_by_different_keys(shards):
    by_speaker = SpectrogramDataset(shards, output_configuration={"label": "speaker"})
    by_gender = SpectrogramDataset(shards, output_configuration={"label": "gender"})
    with pytest.raises(ValueError, match=r"dataset 0 \(.*\) by 'speaker'; dataset 1 \(.*\) by 'gender'.*"
                                         r"merge_labels=True"):
        SpectrogramDatasetRouter([by_speaker, by_gender])
    merged = SpectrogramDatasetRouter([by_speaker, by_gender], merge_labels=True)
    assert {"f", "m"} < set(merged.label_vocabulary)
    SpectrogramDatasetRouter([by_speaker, SpectrogramDataset(shards, output_configuration={"label": "speaker"})])
    assert "merge_labels" in (SpectrogramDatasetRouter.__doc__ or "")


# ---------------------------------------------------------------- 5. --quiet prints no line per file


@pytest.fixture
def filtered_and_bad(tmp_path) -> Tuple[Path, str]:
    """a.wav kept, b.wav filtered out by --keep g=f, c.wav not audio."""
    root = tmp_path / "audio"
    groups = {"a.wav": "f", "b.wav": "m", "c.wav": "f"}
    for seed, name in enumerate(("a.wav", "b.wav")):
        wav(root / name, seed=seed)
    (root / "c.wav").write_bytes(b"not audio" * 100)
    return root, write_json(root / "metadata.json", {name: {"metadata": {"g": g}} for name, g in groups.items()})


def test_quiet_prints_no_line_per_file_left_out(filtered_and_bad, tmp_path, capsys):
    root, meta = filtered_and_bad
    assert shard_cli.run([str(root), meta, str(tmp_path / "out"), "--keep", "g=f", "--workers", "1", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    assert "1 bad, 1 filtered" in captured.out  # the summary stays, and the manifest names them
    rows = json.loads((tmp_path / "out" / "manifest.json").read_text())["report"]["files"]
    assert sorted(row["path"] for row in rows) == ["b.wav", "c.wav"]


def test_a_quiet_dry_run_still_prints_its_report(filtered_and_bad, tmp_path, capsys):
    root, meta = filtered_and_bad
    shard_cli.run([str(root), meta, str(tmp_path / "out"), "--keep", "g=f", "--workers", "1", "--quiet", "--dry-run"])
    err = capsys.readouterr().err
    assert "b.wav" in err and "c.wav" in err, err


# ---------------------------------------------------------------- 6. --config takes the name of a shipped config


@pytest.mark.parametrize("name", ["16k_64mel", "16k_64mel.json"])
def test_config_takes_a_shipped_name_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = shard_cli.build_parser().parse_args(["a", "out", "--config", name])
    assert shard_cli.features_from_args(args).n_mels == 64
    shipped = REPO / "spgdataset" / "configs" / "16k_64mel.json"
    assert feature_configs.load_config(name) == json.loads(shipped.read_text())


def test_an_unknown_config_is_a_usage_error_listing_the_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        shard_cli.run(["a", "out", "--config", "16k_81mel"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert done.value.code == 2 and last.startswith("spg-shard: error: --config 16k_81mel: "), last
    assert all(name in last for name in ("16k_64mel", "16k_80mel", "16k_80mel_float32")), last
    assert set(feature_configs.config_names()) >= {"16k_64mel", "16k_80mel", "16k_80mel_float32"}


def test_the_configs_are_package_data():
    if sys.version_info < (3, 11):
        pytest.skip("tomllib")
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "configs/*.json" in project["tool"]["setuptools"]["package-data"]["spgdataset"]


# ---------------------------------------------------------------- 7, 8. what the router and a dataset say they are


def test_the_router_says_what_it_mixes_in_one_line(shards):
    first = SpectrogramDataset(shards, batch_size=4)
    second = SpectrogramDataset(shards, batch_size=4, split=(0.5, 0.5), subset=1)
    router = SpectrogramDatasetRouter([first, second], weights=[3, 1])
    text = repr(router)
    assert "\n" not in text and text.startswith("SpectrogramDatasetRouter(2 datasets: "), text
    assert f"{first.num_windows():,} windows at weight 0.75" in text and "weight 0.25" in text, text
    assert shards in text and "stop 'first_exhausted'" in text and f"{len(router):,} batches of 4" in text, text
    windows = sum(1 for batch in router for _ in batch["key"])
    assert f"{windows:,} windows per epoch" in text, text
    assert repr(SpectrogramDatasetRouter()).startswith("SpectrogramDatasetRouter(0 datasets")


def test_a_linear_dataset_says_linear_bins(corpus, tmp_path):
    root, meta = corpus
    features = FeatureConfig(kind="linear", n_fft=256, f_min=500.0, f_max=4000.0, transform_type="log_spect_plus_one")
    write_shards(root, meta, tmp_path / "linear", features=features, workers=1, progress=False)
    text = repr(SpectrogramDataset(str(tmp_path / "linear")))
    assert f"; {features.n_mels} linear bins at 16000 Hz" in text and "mels" not in text, text


# ---------------------------------------------------------------- 9. every plotted file has its time axis


def test_every_plotted_file_labels_its_seconds(shards, tmp_path, monkeypatch):
    figures = []

    def keep(figure, out):
        figure.canvas.draw()
        figures.append(figure)

    monkeypatch.setattr(plot, "_save", keep)
    ds = SpectrogramDataset(shards)
    plot.plot_files(ds, [0, 1, 2], str(tmp_path / "p.png"))
    labelled = [axis for axis in figures[0].axes if axis.get_xlabel() == "seconds"
                and any(label.get_visible() and label.get_text() for label in axis.get_xticklabels())]
    assert len(labelled) == 3


# ---------------------------------------------------------------- 10. the version is the README's


def test_the_version_is_0_3():
    assert spgdataset.__version__ == "0.3.0"
    if sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads((REPO / "pyproject.toml").read_text())
        assert "version" in project["project"].get("dynamic", [])  # read from spgdataset/version.py
        assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "spgdataset.version.__version__"}


def test_a_split_key_no_file_has_splits_by_path_with_check_names_off(run16k):
    """check_names=False accepts a split_key the shards do not have (yet): every file then splits by its path,
    as a file without the key always does (it was a bare KeyError)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a subset may be small: its warning is not what this tests
        for subset in (0, 1):
            unknown = SpectrogramDataset(run16k[0], split=(0.5, 0.5), subset=subset, split_key="nope",
                                         check_names=False)
            by_path = SpectrogramDataset(run16k[0], split=(0.5, 0.5), subset=subset)
            assert unknown.windows() == by_path.windows()
