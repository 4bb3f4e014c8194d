"""The reference API runs unchanged, and mistakes are caught: the reference call builds shards once (and again
when the inputs change), every name a user passes is checked with a suggestion, and a split without a subset
says which part was taken."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter, SpgError, write_shards
from spgdataset.demo import make_corpus
from spgdataset.write import job

OUTPUTS = {"masks": ["speech"], "label": "speaker"}


@pytest.fixture
def audio(tmp_path) -> Tuple[Path, str]:
    root = tmp_path / "audio"
    return root, make_corpus(root, total_seconds=20, seed=4, min_seconds=2.5, max_seconds=4)


def epoch(ds: SpectrogramDataset) -> List[Tuple[str, int, bytes, int]]:
    return [(b["key"], int(b["start"]), b["spectrogram"].numpy().tobytes(), int(b["label"])) for b in ds]


def files_and_times(*folders: Path) -> Dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for folder in folders for p in folder.rglob("*") if p.is_file()}


def test_the_reference_call_streams_what_spg_shard_and_a_source_stream(audio, tmp_path):
    root, meta = audio
    write_shards(root, meta, tmp_path / "shards", progress=False)
    expected = SpectrogramDataset(tmp_path / "shards", output_configuration=OUTPUTS, shuffle=False)
    positional = SpectrogramDataset(str(root), str(tmp_path / "spec"), str(tmp_path / "idx"), meta, 16000, 1.92, 0.1,
                                    0.5, 160, 80, 400, True, output_configuration=OUTPUTS, shuffle=False)
    assert positional.windows() == expected.windows() and epoch(positional) == epoch(expected)
    assert (tmp_path / "idx" / "build.json").exists() and (tmp_path / "spec" / "manifest.json").exists()
    named = SpectrogramDataset(audio_root=root, spectrograms_root=tmp_path / "spec", index_root=tmp_path / "idx",
                               metadata_json_path=meta, output_configuration=OUTPUTS, shuffle=False)
    assert epoch(named) == epoch(expected)


def test_a_second_call_writes_nothing_and_changed_metadata_rebuilds(audio, tmp_path, monkeypatch):
    root, meta = audio
    folders = (tmp_path / "spec", tmp_path / "idx")
    SpectrogramDataset(root, *map(str, folders), meta)
    before = files_and_times(*folders)

    def refuse(*args, **kwargs):
        raise AssertionError("the shards were written again")

    monkeypatch.setattr(job, "write_shards", refuse)
    again = SpectrogramDataset(root, *map(str, folders), meta, output_configuration=OUTPUTS)
    assert files_and_times(*folders) == before and again.num_windows() > 0
    monkeypatch.undo()

    metadata = json.loads(Path(meta).read_text())
    first = sorted(metadata)[0]
    metadata[first]["metadata"]["speaker"] = "someone_new"
    Path(meta).write_text(json.dumps(metadata))
    rebuilt = SpectrogramDataset(root, *map(str, folders), meta, output_configuration=OUTPUTS)
    assert "someone_new" in rebuilt.label_vocabulary


def test_an_audio_folder_given_as_a_source_says_what_to_do(audio):
    root, _ = audio
    with pytest.raises(SpgError, match="holds audio files, not shards.*spg-shard"):
        SpectrogramDataset(root)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("audio")
    meta = make_corpus(root, total_seconds=30, seed=2, min_seconds=2.5, max_seconds=4)
    out = tmp_path_factory.mktemp("shards")
    write_shards(root, meta, out, max_shard_files=3, progress=False)
    return str(out)


@pytest.mark.parametrize("kwargs,needle", [
    ({"output_configuration": {"masks": ["Speech"]}}, "did you mean 'speech'"),
    ({"output_configuration": {"masks": ["music"]}}, "interval names are 'noise', 'speech'"),
    ({"content_intervals": ["speach"]}, "did you mean 'speech'"),
    ({"output_configuration": {"label": "speakr"}}, "did you mean 'speaker'"),
    ({"output_configuration": {"label": "age"}}, "metadata keys are 'gender', 'speaker'"),
    ({"output_configuration": {"meta": ["gendr"]}}, "did you mean 'gender'"),
    ({"split_key": "spaeker", "split": (0.5, 0.5), "subset": 0}, "did you mean 'speaker'")])
def test_every_name_is_checked_with_a_suggestion(shards, kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")) as caught:
        SpectrogramDataset(shards, **kwargs)
    assert "check_names=False" in str(caught.value)


def test_check_names_false_accepts_a_name_the_data_has_not(shards):
    ds = SpectrogramDataset(shards, output_configuration={"masks": ["music"]}, content_intervals=["speech"],
                            check_names=False, batch_size=8)
    batch = next(iter(ds))
    assert not batch["masks"]["music"].any()


def test_a_split_without_a_subset_says_which_part_it_took(shards):
    with pytest.warns(UserWarning, match=r"this dataset is subset 0 .*subset=1, \.\.\., 2"):
        ds = SpectrogramDataset(shards, split=(0.8, 0.1, 0.1))
    assert ds.config.split.subset == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SpectrogramDataset(shards, split=(0.8, 0.1, 0.1), subset=2)
        SpectrogramDataset(shards)  # one part: nothing to say


def test_summary_and_repr_agree_with_the_manifest_and_the_subsets(shards):
    manifest = json.loads(Path(shards, "manifest.json").read_text())
    split = (0.6, 0.4)
    parts = [SpectrogramDataset(shards, split=split, subset=s, split_key="speaker", output_configuration=OUTPUTS)
             for s in (0, 1)]
    summary = parts[1].summary()
    assert [row["windows"] for row in summary.subsets] == [p.num_windows() for p in parts]
    assert sum(row["files"] for row in summary.subsets) == manifest["totals"]["files"]
    assert sum(row["files"] for row in summary.subsets) == sum(len(p.selection.files) for p in parts)
    assert abs(sum(row["hours"] for row in summary.subsets) - manifest["totals"]["hours"]) < 0.01
    mine = parts[1]
    labels = {row["value"]: row for row in summary.labels}
    windows_by_label: Dict[str, int] = {}
    for b in mine:
        value = mine.label_vocabulary[int(b["label"])]
        windows_by_label[value] = windows_by_label.get(value, 0) + 1
    assert {v: r["windows"] for v, r in labels.items() if r["windows"]} == windows_by_label
    text = str(summary)
    assert "<- this dataset" in text and "subset 1" in text
    assert f"{mine.num_windows():,} windows" in repr(mine) and "subset 1 of (0.6, 0.4)" in repr(mine)


def test_the_router_takes_the_reference_default():
    router = SpectrogramDatasetRouter()
    assert len(router) == 0 and list(router) == [] and router.label_vocabulary == []
    assert router.state_dict()["windows"] == []
