"""vak-style frame labels (output_configuration={"frame_labels": True}) and the labelmap, through real shards.

The rule (spgdataset/rules/framelabels.py) is checked against vak 1.1.0's own output on its reference sounds
(tests/data/vak: frame_labels.json, made by vak's from_segments on centred time bins), and against vak's function
(tests/rules/test_framelabels.py: vak_from_segments, copied verbatim) on corpora written here: every reading path
(streaming shuffled, DataLoader workers, ds[i], map-style batches), segments of long files, padded short files,
and the router, which moves each dataset's numbers into one labelmap.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

from spgdataset import FeatureConfig, SpectrogramDataset, SpectrogramDatasetRouter, SpgError, write_shards
from spgdataset.read.framelabels import FrameLabeller
from tests.helpers import Shards, wav, write_json
from tests.rules.test_framelabels import vak_from_segments, vak_labels

VAK = Path(__file__).resolve().parents[1] / "data" / "vak"
HOP, RATE = 160, 16000  # the default features
LABELS = {"frame_labels": True, "spectrogram": False, "masks": []}
EVERY_WINDOW = dict(window_size_sec=0.4, window_offset_sec=0.01, window_content_ratio=0, normalize=False)


def labels_by_window(items: List[Dict[str, Any]]) -> Dict[Tuple[str, int], List[int]]:
    """{(path, start in the recording): frame labels} of single items or batches."""
    out: Dict[Tuple[str, int], List[int]] = {}
    for item in items:
        if isinstance(item["path"], list):  # a batch
            for path, start, row in zip(item["path"], item["start"].tolist(), item["frame_labels"].tolist()):
                out[(path, start)] = row
        else:
            out[(item["path"], int(item["start"]))] = item["frame_labels"].tolist()
    return out


def write(root: Path, name: str, files: Dict[str, Tuple[float, Dict[str, List[List[int]]]]], **kwargs: Any) -> Path:
    """Shards of noise files {path: (seconds, intervals)} at 16 kHz, written with metadata.json."""
    audio = root / f"{name}-audio"
    for i, (path, (seconds, _)) in enumerate(files.items()):
        wav(audio / path, seconds, seed=i)
    meta = write_json(root / f"{name}.json", {path: {"intervals": intervals} for path, (_, intervals) in files.items()})
    write_shards(audio, meta, root / name, workers=1, progress=False, **kwargs)
    return root / name


def expected(files: Dict[str, Tuple[float, Dict[str, List[List[int]]]]], labels: Dict[str, int]) -> Dict[str, Any]:
    """Each file's frame labels by vak's own function on centred time bins (no boundary is an exact tie here)."""
    out = {}
    for path, (seconds, intervals) in files.items():
        for a, b in (span for spans in intervals.values() for span in spans):
            assert 2 * (a % HOP) != HOP and 2 * (b % HOP) != HOP
        out[path] = vak_labels(intervals, labels, 1 + int(seconds * RATE) // HOP, HOP, RATE)
    return out


def check_windows(got: Dict[Tuple[str, int], List[int]], whole: Dict[str, np.ndarray], window: int) -> None:
    for (path, start), row in got.items():
        part = whole[path][start : start + window]
        assert row == part.tolist() + [0] * (window - len(part)), (path, start)  # padding of a short file: 0


# ---------------------------------------------------------------- vak's own output on its reference sounds


CENTRED = [case for case in json.loads((VAK / "frame_labels.json").read_text())["cases"]
           if case["time_bins_kind"] == "centred"]


@pytest.mark.parametrize("case", CENTRED, ids=[f"{c['audio']}-{c['config']}" for c in CENTRED])
def test_frame_labels_are_vaks_on_its_reference_sounds(tmp_path, case):
    """Shards of vak's reference sound at its own rate with its n_fft and hop, annotated with the times vak read
    (crowsetta rounds them to ms, so the samples are exact); every window, one frame apart, is vak's vector's
    slice, also at boundaries exactly half-way between two frame centres, where vak's float seconds decide the
    side by rounding (the speech file has one)."""
    reference = json.loads((VAK / "frame_labels.json").read_text())
    rate, hop, name = case["sample_rate"], case["step_size"], case["audio"]
    params = json.loads((VAK / "spect" / case["config"] / "spect_params.json").read_text())
    n_fft = params["spect_params"].get("fft_size", 512)
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(VAK / "audio" / name, folder / name)
    rows = ["onset_s,offset_s,label"] + [f"{a!r},{b!r},{label}" for a, b, label in
                                         zip(case["onsets_s"], case["offsets_s"], case["labels"])]
    (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    features = FeatureConfig(kind="linear", sample_rate=rate, n_fft=n_fft, hop_length=hop, transform_type="log_spect")
    write_shards(folder, None, tmp_path / "shards", features=features, annot_format="simple-seq",
                 labelset=reference["labelset"], workers=1, progress=False)
    window = 24
    ds = SpectrogramDataset(str(tmp_path / "shards"), window_size_sec=window * hop / rate,
                            window_offset_sec=hop / rate, window_content_ratio=0, output_configuration=LABELS,
                            shuffle=False)
    assert ds.labelmap == reference["labelmap"] == json.loads((tmp_path / "shards" / "manifest.json").read_text())[
        "labelmap"]
    vak = np.array(case["frame_labels"])
    bins = np.array(case["time_bins"])
    assert np.array_equal(bins, np.arange(len(vak)) * hop / rate)
    assert np.array_equal(vak_from_segments(case["labels_int"], case["onsets_s"], case["offsets_s"], bins), vak)
    got = labels_by_window(list(ds))
    assert len(got) == len(vak) - window + 1  # every window
    full = np.zeros(len(vak), dtype=np.int64)
    kinds = set()
    for (_, start), row in got.items():
        full[start : start + window] = row
        assert row == vak[start : start + window].tolist(), (start, row, vak[start : start + window].tolist())
        end = start + window - 1
        inside = [start > 0 and vak[start] != 0 and vak[start - 1] == vak[start],
                  end + 1 < len(vak) and vak[end] != 0 and vak[end + 1] == vak[end],
                  len(set(vak[start : end + 1].tolist()) - {0}) > 1]
        kinds |= {kind for kind, is_it in zip(("starts inside", "ends inside", "spans several"), inside) if is_it}
    assert kinds == {"starts inside", "ends inside", "spans several"}
    for (_, start), row in got.items():
        assert row == full[start : start + window].tolist()  # windows agree where they overlap
    assert np.array_equal(full, vak)


# ---------------------------------------------------------------- a corpus of our own


CORPUS = {  # intervals in samples at 16 kHz; none of their ends is half-way between two frame centres
    "long.wav": (3.0, {"a": [[1000, 9000], [30010, 33000]], "b": [[8500, 20011], [20100, 20110]],
                       "c": [[15000, 26030]], "speech": [[0, 48000]]}),
    "mid.wav": (1.2, {"c": [[170, 4150]], "a": [[4150, 4161], [18010, 19190]]}),
    "short.wav": (0.3, {"b": [[100, 2010]], "c": [[1900, 4800]]}),  # shorter than a window: padded
    "plain.wav": (0.8, {}),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("frame-labels"), "shards", CORPUS)


def test_every_reading_path_gives_the_rules_labels(corpus):
    """Streaming shuffled in batches, single windows, DataLoader workers, ds[i] and map-style batches."""
    kwargs = dict(window_size_sec=0.4, window_offset_sec=0.05, window_content_ratio=0, pad_short=True,
                  output_configuration=dict(LABELS, masks=["a"], spectrogram=True))
    ds = SpectrogramDataset(str(corpus), shuffle=True, batch_size=7, seed=3, **kwargs)
    assert ds.labelmap == {"background": 0, "a": 1, "b": 2, "c": 3, "speech": 4}
    whole = expected(CORPUS, ds.labelmap)
    streamed = labels_by_window(list(ds))
    batch = next(iter(ds))
    assert batch["frame_labels"].dtype == torch.int64 and batch["frame_labels"].shape == (7, ds.window)
    assert list(batch) == ["spectrogram", "masks", "frame_labels", "key", "path", "start"]
    assert len(streamed) == ds.num_windows() and ("short.wav", 0) in streamed
    check_windows(streamed, whole, ds.window)
    single = SpectrogramDataset(str(corpus), shuffle=False, **kwargs)
    assert labels_by_window(list(single)) == streamed
    assert labels_by_window(list(ds.loader(batch_size=5, num_workers=1))) == streamed
    items = [single[i] for i in range(len(single))]
    assert items[0]["frame_labels"].shape == (ds.window,) and items[0]["frame_labels"].dtype == torch.int64
    assert labels_by_window(items) == streamed
    windows = single.map_style()
    picked = windows[list(range(len(windows)))[::-1]]
    assert picked["frame_labels"].shape == (len(windows), ds.window) and labels_by_window([picked]) == streamed
    loader = torch.utils.data.DataLoader(windows, batch_size=4, shuffle=True, num_workers=0)
    assert labels_by_window(list(loader)) == streamed


def test_a_set_without_intervals_has_background_only(tmp_path):
    """Frame labels of unannotated recordings are all background, and the labelmap is background alone: such a
    set can be mixed with annotated ones (noise, silence), so asking for them is no error."""
    out = write(tmp_path, "plain", {"a.wav": (0.6, {}), "b.wav": (0.5, {})})
    ds = SpectrogramDataset(str(out), output_configuration=LABELS, window_size_sec=0.2)
    assert ds.labelmap == {"background": 0} and json.loads((out / "manifest.json").read_text())["labelmap"] == \
        {"background": 0}
    rows = torch.stack([item["frame_labels"] for item in ds])
    assert rows.shape == (ds.num_windows(), 20) and not rows.any()


# ---------------------------------------------------------------- segments of long files


def long_files() -> Dict[str, Tuple[float, Dict[str, List[List[int]]]]]:
    """Segments own 203 frames (2.03 s): the second starts at sample 203 * 160 = 32480, the third at 64960, the
    fourth at 97440. Intervals that only the segments before can tell (rules/framelabels.py: reaching_intervals)."""
    return {
        # ends exactly at the second segment's first sample (its nearest frame is that segment's first), ends 60
        # samples before the third's (still its first frame); c and a overlap across the fourth's start, c first
        # c's second starts 20 samples before the first segment's last sample, nearer the frame after its last:
        # that segment holds it, and must not put it on its last frame
        "cut.wav": (7.3, {"a": [[20000, 32480], [95000, 100000]], "b": [[40000, 64900]],
                          "c": [[90010, 99000], [40420, 41000]]}),
        # c starts first and runs over two segment starts, b inside it: b must win where they overlap, also in
        # the segments where both were cut to the segment's start
        "nested.wav": (7.3, {"c": [[30010, 110020]], "b": [[50010, 105000]], "a": [[115000, 116700]]}),
        # its last 100 samples are past the last frame's centre: an interval there is on the last frame
        "end.wav": (116900 / RATE, {"a": [[116890, 116900]], "b": [[1000, 2030]]}),
        "short.wav": (1.5, {"c": [[200, 9000]]}),
    }


@pytest.fixture(scope="module")
def long_sets(tmp_path_factory) -> Tuple[Path, Path]:
    root, files = tmp_path_factory.mktemp("long-labels"), long_files()
    return write(root, "whole", files), write(root, "segments", files, max_shard_files=3, segments=(2.03, 0.5))


def test_segments_give_the_labels_of_the_whole_file(long_sets):
    whole_set, segment_set = long_sets
    assert json.loads((segment_set / "manifest.json").read_text())["segments"] == {"frames": 203, "overlap": 50}
    whole = SpectrogramDataset(str(whole_set), output_configuration=LABELS, shuffle=False, **EVERY_WINDOW)
    parts = SpectrogramDataset(str(segment_set), output_configuration=LABELS, shuffle=True, batch_size=16,
                               **EVERY_WINDOW)
    assert whole.labelmap == parts.labelmap == {"background": 0, "a": 1, "b": 2, "c": 3}
    expect = labels_by_window(list(whole))
    got = labels_by_window(list(parts))
    assert got.keys() == expect.keys() and len(got) == whole.num_windows()
    assert {key: row for key, row in got.items() if row != expect[key]} == {}
    check_windows(expect, expected(long_files(), whole.labelmap), whole.window)
    assert got[("cut.wav", 203)][0] == 1 and got[("cut.wav", 406)][0] == 2  # the frames the cut alone loses
    assert got[("nested.wav", 609)][:5] == [2] * 5 and got[("end.wav", 691)][-1] == 1
    assert labels_by_window([parts.map_style()[list(range(parts.num_windows()))]]) == got
    # each segment's whole vector, also the frames past its owned ones that no window holds
    index, vak = parts.shards.index, expected(long_files(), parts.labelmap)
    labeller = FrameLabeller(parts.shards, parts.labelmap, HOP, RATE)
    for position in range(index.files):
        offset, frames = index.segment_of(position)[0], int(index.frames[position])
        labels = labeller(position, index.intervals_of(position))
        assert labels.tolist() == vak[index.paths[position]][offset : offset + frames].tolist(), position


# ---------------------------------------------------------------- the labelmap: labelset, names seen, old sets


def test_the_labelmap_comes_from_the_labelset_else_from_the_labels_seen(tmp_path):
    folder = tmp_path / "birds"
    for name, rows in (("a.wav", "0.01,0.05,b\n0.06,0.08,a\n"), ("b.wav", "0.02,0.09,c\n")):
        wav(folder / name, 0.4, seed=len(name))
        (folder / f"{name}.csv").write_text("onset_s,offset_s,label\n" + rows)
    write_shards(folder, None, tmp_path / "labelset", annot_format="simple-seq", labelset="zcab", workers=1,
                 progress=False)
    write_shards(folder, None, tmp_path / "seen", annot_format="simple-seq", workers=1, progress=False)
    with_z = {"background": 0, "a": 1, "b": 2, "c": 3, "z": 4}  # z: in the labelset, in no file
    for out, labelmap in (("labelset", with_z), ("seen", {"background": 0, "a": 1, "b": 2, "c": 3})):
        assert json.loads((tmp_path / out / "manifest.json").read_text())["labelmap"] == labelmap
        assert SpectrogramDataset(str(tmp_path / out), window_size_sec=0.1, window_content_ratio=0).labelmap == labelmap
    ds = SpectrogramDataset(str(tmp_path / "labelset"), window_size_sec=0.1, output_configuration=LABELS,
                            shuffle=False)
    by_path = {item["path"]: item["frame_labels"].tolist() for item in ds if item["start"] == 0}
    assert by_path["b.wav"] == [0, 0] + [3] * 8  # c: frames 2..9 of 10 (0.02 s .. 0.09 s, hop 10 ms)


def test_a_set_written_before_labelmaps_derives_it_from_its_interval_names(corpus, tmp_path):
    old = Shards(str(corpus), tmp_path / "old")
    old.edit_manifest(lambda manifest: manifest.pop("labelmap"))
    kwargs = dict(output_configuration=LABELS, shuffle=False, window_size_sec=0.4, pad_short=True)
    ds = SpectrogramDataset(str(old), **kwargs)
    assert ds.labelmap == SpectrogramDataset(str(corpus), **kwargs).labelmap == {"background": 0, "a": 1, "b": 2,
                                                                                 "c": 3, "speech": 4}
    assert labels_by_window(list(ds)) == labels_by_window(list(SpectrogramDataset(str(corpus), **kwargs)))


def test_a_labelmap_that_breaks_the_rule_is_refused(corpus, tmp_path):
    edited = Shards(str(corpus), tmp_path / "edited")
    for wrong, problem in (({"background": 1, "a": 0}, "'background' is 1"), (["a"], "not an object"),
                           ({"background": 0, "speech": 1, "a": 2}, "'speech' is 1, vak's rule gives it 2"),
                           ({"background": 0, "a": "1"}, "'a' is '1'")):
        edited.edit_manifest(lambda manifest: manifest.update(labelmap=wrong))
        with pytest.raises(SpgError, match=f"manifest.json: labelmap: {problem}"):
            SpectrogramDataset(str(edited))


def test_a_label_named_background_is_refused_only_for_frame_labels(tmp_path):
    out = write(tmp_path, "bg", {"a.wav": (0.6, {"background": [[0, 4000]], "a": [[5000, 6000]]})})
    assert json.loads((out / "manifest.json").read_text())["labelmap"] is None  # written all the same
    ds = SpectrogramDataset(str(out), window_size_sec=0.2, output_configuration={"masks": ["background"]})
    assert len(list(ds)) == ds.num_windows() > 0
    with pytest.raises(ValueError, match="a label is named 'background'.*rename that label"):
        SpectrogramDataset(str(out), window_size_sec=0.2, output_configuration=LABELS)
    with pytest.raises(ValueError, match="named 'background'"):
        ds.labelmap
    with pytest.raises(ValueError, match=r"unknown output_configuration keys: \['frame_label'\] .*did you mean "
                                         r"'frame_labels'"):
        SpectrogramDataset(str(out), output_configuration={"frame_label": True})


# ---------------------------------------------------------------- the router


def test_the_router_moves_each_datasets_numbers_into_one_labelmap(tmp_path):
    first = {"x.wav": (1.0, {"a": [[1000, 6000]], "b": [[7000, 15000]]})}
    second = {"y.wav": (1.0, {"b": [[2000, 5000]], "c": [[9000, 14000]]}), "z.wav": (0.5, {})}
    sets = [write(tmp_path, "first", first), write(tmp_path, "second", second)]
    kwargs = dict(output_configuration=LABELS, window_size_sec=0.2, window_offset_sec=0.05, window_content_ratio=0,
                  batch_size=6)
    datasets = [SpectrogramDataset(str(out), **kwargs) for out in sets]
    assert [ds.labelmap for ds in datasets] == [{"background": 0, "a": 1, "b": 2}, {"background": 0, "b": 1, "c": 2}]
    router = SpectrogramDatasetRouter(datasets, stop="all_exhausted")
    assert router.labelmap == {"background": 0, "a": 1, "b": 2, "c": 3}
    names = {**{0: "background"}, **{n: name for name, n in router.labelmap.items()}}
    seen = {}
    for batch in router:
        for i, path, start, row in zip(batch["dataset"].tolist(), batch["path"], batch["start"].tolist(),
                                       batch["frame_labels"].tolist()):
            seen[(path, start)] = [names[n] for n in row]
    assert len(seen) == sum(ds.num_windows() for ds in datasets)
    for ds in datasets:
        own = {n: name for name, n in ds.labelmap.items()}
        mine = {key: [own[n] for n in row] for key, row in labels_by_window(list(ds)).items()}
        assert {key: seen[key] for key in mine} == mine
    assert {"a", "b", "c"} <= {name for row in seen.values() for name in row}
    plain = SpectrogramDataset(str(sets[1]), **dict(kwargs, output_configuration={"spectrogram": False, "masks": []}))
    with pytest.raises(ValueError, match="frame_labels"):
        SpectrogramDatasetRouter([datasets[0], plain])
