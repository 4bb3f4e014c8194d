"""Hostile states and empty datasets: every field of a saved position is checked before anything changes, and a
dataset or router with nothing to yield says so, with the reason, instead of yielding nothing without a word.

The shard set is conftest's run16k (9 files of 2 to 7 s, every one annotated with speech and noise).
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List

import numpy as np
import pytest

from spgdataset import SpectrogramDataset, SpectrogramDatasetRouter

NO_MASKS = {"spectrogram": False, "masks": []}


def dataset(run16k, **kwargs: Any) -> SpectrogramDataset:
    kwargs.setdefault("window_content_ratio", 0)
    kwargs.setdefault("seed", 3)
    return SpectrogramDataset(run16k[0], batch_size=4, output_configuration=NO_MASKS, **kwargs)


def router(run16k) -> SpectrogramDatasetRouter:
    return SpectrogramDatasetRouter([dataset(run16k), dataset(run16k, seed=1)], weights=[0.6, 0.4], seed=3)


def without(state: Dict[str, Any], name: str) -> Dict[str, Any]:
    return {k: v for k, v in state.items() if k != name}


# ---------------------------------------------------------------- states, field by field

COMMON_BAD = [  # (change, the field the message names): each one passed the old checks
    ({"consumed": -5}, "consumed"),
    ({"consumed": 1e18}, "consumed"),  # a float, however large
    ({"consumed": 10**18}, "consumed"),  # an int beyond the epoch's items
    ({"consumed": True}, "consumed"),
    ({"consumed": "3"}, "consumed"),
    ({"epoch": -1}, "epoch"),
    ({"epoch": 1.0}, "epoch"),
    ({"epoch": 2**63}, "epoch"),
    ({"seed": 3.0}, "seed"),  # equal to the int, but not one
    ({"num_workers": False}, "num_workers"),
    ({"batch_size": 4.0}, "batch_size"),
    ({"world_size": True}, "world_size"),
]
DATASET_BAD = COMMON_BAD + [({"window": [192.0, 10.0]}, "window")]
ROUTER_BAD = COMMON_BAD + [(lambda state: {"weights": np.array(state["weights"])}, "weights"),
                           (lambda state: {"windows": [float(n) for n in state["windows"]]}, "windows")]


def refused(target: Any, base: Dict[str, Any], change: Any, field: str) -> None:
    """`base` with `change` (a dict, or a function of `base` giving one) is refused naming `field`, and `target`
    stays where it was."""
    before = target.state_dict()
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        target.load_state_dict({**base, **(change(base) if callable(change) else change)})
    assert target.state_dict() == before


@pytest.mark.parametrize("change, field", DATASET_BAD)
def test_a_dataset_state_is_checked_field_by_field(run16k, change, field):
    ds = dataset(run16k)
    good = {**ds.state_dict(), "epoch": 2, "consumed": 3}
    ds.load_state_dict(good)  # a position to stay at
    refused(ds, good, change, field)


@pytest.mark.parametrize("change, field", ROUTER_BAD)
def test_a_router_state_is_checked_field_by_field(run16k, change, field):
    mixed = router(run16k)
    good = {**mixed.state_dict(), "epoch": 2, "consumed": 3}
    mixed.load_state_dict(good)
    refused(mixed, good, change, field)
    assert [ds.epoch for ds in mixed.datasets] == [2, 2]  # the datasets' epochs did not move either


@pytest.mark.parametrize("field", ["epoch", "consumed", "shards", "window", "windows", "world_size", "seed"])
def test_a_dataset_state_without_a_field_is_refused(run16k, field):
    ds = dataset(run16k)
    with pytest.raises(ValueError, match=rf"missing {field}\b"):
        ds.load_state_dict(without(ds.state_dict(), field))


@pytest.mark.parametrize("field", ["consumed", "shards", "plans", "world_size", "stop"])
def test_a_router_state_without_a_field_is_refused(run16k, field):
    mixed = router(run16k)
    with pytest.raises(ValueError, match=rf"missing {field}\b"):
        mixed.load_state_dict(without(mixed.state_dict(), field))


def test_consumed_may_reach_the_epochs_items_and_no_further(run16k):
    ds = dataset(run16k)
    ds.load_state_dict({**ds.state_dict(), "consumed": len(ds)})  # saved at the very end of the epoch
    assert list(ds) == []
    with pytest.raises(ValueError, match=rf"consumed must be in \[0, {len(ds)}\]"):
        ds.load_state_dict({**ds.state_dict(), "consumed": len(ds) + 1})
    mixed = router(run16k)
    items = len(mixed)
    mixed.load_state_dict({**mixed.state_dict(), "consumed": items})
    with pytest.raises(ValueError, match=rf"consumed must be in \[0, {items}\]"):
        mixed.load_state_dict({**mixed.state_dict(), "consumed": items + 1})


def test_another_objects_state_and_a_non_dict_are_named(run16k):
    ds, mixed = dataset(run16k), router(run16k)
    with pytest.raises(ValueError, match="dataset state: unknown field.*'plans'"):
        ds.load_state_dict(mixed.state_dict())
    with pytest.raises(ValueError, match=r"router state: unknown field\(s\) \['chunks', 'window'\]"):
        mixed.load_state_dict(ds.state_dict())
    with pytest.raises(ValueError, match="must be a dict"):
        ds.load_state_dict([("epoch", 0)])


def test_the_loader_refuses_a_bad_state_and_keeps_its_position(run16k):
    ds = dataset(run16k)
    loader = ds.loader(batch_size=4, num_workers=0)
    good = {**loader.state_dict(), "epoch": 1, "consumed": 5}
    loader.load_state_dict(good)
    for bad in ({"consumed": -5}, {"consumed": 1e18}, without(good, "shards")):
        with pytest.raises(ValueError, match="consumed|shards"):
            loader.load_state_dict(bad if "epoch" in bad else {**good, **bad})
        assert loader.state_dict() == good
    assert len(list(loader)) == len(loader) - 5  # the resume point is the good state's


# ---------------------------------------------------------------- nothing to yield


def warnings_of(make) -> List[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught]


def test_an_empty_subset_warns_once_with_its_counts(run16k):
    assert warnings_of(lambda: dataset(run16k, split=(1, 0), subset=0)) == []  # the subset with the files: no word
    messages = warnings_of(lambda: dataset(run16k, split=(1, 0), subset=1))
    assert len(messages) == 1 and run16k[0] in messages[0]
    assert "subset 1 of split (1, 0) has 0 files" in messages[0]


def test_files_all_shorter_than_a_window_warn_with_the_counts(run16k):
    messages = warnings_of(lambda: dataset(run16k, window_size_sec=30.0))
    assert len(messages) == 1
    assert "9 files and 0 windows of 3000 frames (30 s) even before the content rule" in messages[0]
    assert "shorter than one window" in messages[0]


def test_a_content_rule_that_keeps_nothing_names_the_intervals(run16k):
    everything = dataset(run16k).num_windows()
    messages = warnings_of(lambda: dataset(run16k, content_intervals=["nope"], check_names=False,
                                           window_content_ratio=0.5))
    assert len(messages) == 1
    assert f"9 files and {everything} windows of 192 frames before the content rule, 0 after" in messages[0]
    assert "['nope']" in messages[0] and "'nope' not in the shard set" in messages[0]


@pytest.mark.parametrize("weights", [None, [0.5, 0.5]])
def test_first_exhausted_refuses_a_dataset_without_windows(run16k, weights):
    empty = dataset(run16k, split=(1, 0), subset=1)
    with pytest.raises(ValueError, match=r"dataset 1 \(.*\) has no windows: .*has 0 files.*first_exhausted"):
        SpectrogramDatasetRouter([dataset(run16k), empty], weights=weights, stop="first_exhausted")
    SpectrogramDatasetRouter([dataset(run16k), empty], weights=[1, 0], stop="first_exhausted")  # left out: fine


def test_a_router_with_nothing_to_yield_names_its_datasets(run16k):
    empty = [dataset(run16k, split=(1, 0), subset=1),
             dataset(run16k, content_intervals=["nope"], check_names=False, window_content_ratio=0.5)]
    with pytest.raises(ValueError, match=r"nothing to yield: dataset 0 .*has 0 files.*; dataset 1 .*'nope'"):
        SpectrogramDatasetRouter(empty, weights=[1, 1], stop="all_exhausted")
    with pytest.raises(ValueError, match="nothing to yield"):
        SpectrogramDatasetRouter([dataset(run16k), empty[0]], weights=[0, 1], stop="all_exhausted")
    with pytest.raises(ValueError, match="dataset 1 .*cannot be resampled"):
        SpectrogramDatasetRouter([dataset(run16k), empty[0]], weights=[1, 1], stop="resample", epoch_length=10)
    mixed = SpectrogramDatasetRouter([dataset(run16k), empty[0]], weights=[1, 1], stop="all_exhausted")
    assert len(mixed) == len(dataset(run16k)) > 0  # all_exhausted: the empty one runs out, the other goes on


def test_a_state_of_another_chunking_is_refused_naming_it(run16k):
    """The chunks group an epoch's windows (with the ramp of read/chunks.py): another shuffle_buffer, or a state
    saved before the ramp (no "chunks"), would resume another order."""
    state = {**dataset(run16k).state_dict(), "consumed": 3}
    with pytest.raises(ValueError, match=r"state was saved with chunks=\[10000, 16\], this dataset has \[37, 16\]"):
        dataset(run16k, shuffle_buffer=37).load_state_dict(state)
    with pytest.raises(ValueError, match="missing chunks"):
        dataset(run16k).load_state_dict(without(state, "chunks"))
    dataset(run16k).load_state_dict(state)
