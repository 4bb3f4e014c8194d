"""A dataset's choices checked against its shard set, so that a mistake is an error at construction, not a
silent empty mask, a label of -1 everywhere or a split that lets speakers leak between train and test.

Every name a user passes (mask and content interval names, `label`, `meta` keys, `split_key`) must be in
the shard set; otherwise a ValueError lists the names that are, with the closest one suggested. With
`check_names=False` an absent name is accepted (a corpus that has no "noise" intervals yet: its mask is all
False). The default masks (["speech"]) are not checked: they are not the user's choice.
"""

from __future__ import annotations

import difflib
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


from ..errors import shown
from ..format.features import FeatureConfig
from ..format.index import MAX_VOCABULARY
from ..rules.splits import normalize_split
from ..rules.windows import WindowRule, window_frames
from .framelabels import labelmap_of
from .options import Batching, DatasetArguments, DatasetConfig, Outputs, Placement, Reading, Split
from .source import ShardSet
from .states import is_finite_number

DEFAULT_OUTPUTS = {"audio": False, "spectrogram": True, "masks": ["speech"], "meta": [], "label": None,
                   "frame_labels": False}
FEATURE_CHECKS = ("sample_rate", "hop_length", "n_mels", "n_fft")
MAX_WINDOW_FRAMES = 2**31 - 1  # a window's frames times its mels stay far inside int64 (and inside memory)


def configure(shards: ShardSet, args: DatasetArguments) -> DatasetConfig:
    """Every argument checked against the shard set, in the order a user fixes them, as typed values."""
    features = check_features(shards, args)
    rate, hop = features.sample_rate, features.hop_length
    window = window_length("window_size_sec", args.window_size_sec, rate, hop)
    step = window_length("window_offset_sec", args.window_offset_sec, rate, hop)
    segments = shards.manifest.segments
    if segments and window > segments[1]:
        raise ValueError(f"window_size_sec={args.window_size_sec} is {window} frames; the long files of "
                         f"{shards.root} are stored in segments that overlap by {segments[1]} frames, "
                         "so a window can be at most that long (rewrite them with longer overlaps)")
    ratio = content_ratio("window_content_ratio", args.window_content_ratio)
    check_names(shards, args.output_configuration, args.content_intervals, args.split_key, args.check_names)
    outputs = outputs_of(shards, args.output_configuration)
    content = tuple(args.content_intervals if args.content_intervals is not None else outputs.masks)
    rule = WindowRule(window, step, hop, content, ratio, bool(args.pad_short))
    split = split_of(args.split, args.subset, args.split_key)
    normalize = choice("normalize", args.normalize, (True, False, None, "global", "window"))
    reading = Reading(choice("on_error", args.on_error, ("raise", "warn")), choice("verify", args.verify,
                      (True, False, "always")), int(args.max_memory_cache),
                      "global" if normalize is True else (normalize or None), args.dtype)
    batching = Batching(args.batch_size, args.drop_last, args.num_workers, args.shuffle, args.seed,
                        args.shuffle_buffer, args.file_buffer, max(1, int(args.batch_threads)))
    return DatasetConfig(features, rule, outputs, split, batching, reading, Placement(args.rank, args.world_size))


def check_features(shards: ShardSet, given: DatasetArguments) -> FeatureConfig:
    """The shards' feature parameters; the ones given (not None) must agree with them."""
    features = shards.manifest.features
    for name in FEATURE_CHECKS:
        value, theirs = getattr(given, name), getattr(features, name)
        if value is not None and value != theirs:
            raise ValueError(f"{name}={value} disagrees with the shards' {name}={theirs} "
                             f"({shards.root}); leave it None to take the shards' value")
    return features


def outputs_of(shards: ShardSet, output_configuration: Optional[Mapping[str, Any]]) -> Outputs:
    outputs: Dict[str, Any] = dict(DEFAULT_OUTPUTS)
    outputs.update(output_configuration or {})
    unknown = sorted(set(outputs) - set(DEFAULT_OUTPUTS))
    if unknown:
        raise ValueError(f"unknown output_configuration keys: {unknown} (known: {sorted(DEFAULT_OUTPUTS)})"
                         f"{_suggestion(unknown[0], sorted(DEFAULT_OUTPUTS))}")
    if outputs["audio"] and not shards.manifest.with_audio:
        raise ValueError(f"output_configuration asks for audio, but the shards in {shards.root} were "
                         "written without it (rerun spg-shard with --with-audio)")
    if outputs["frame_labels"]:
        labelmap_of(shards)  # a label named "background" is refused here, when frame labels are asked for
    return Outputs(bool(outputs["spectrogram"]), bool(outputs["audio"]), tuple(outputs["masks"] or ()),
                   tuple(outputs["meta"] or ()), outputs["label"], bool(outputs["frame_labels"]))


def check_names(shards: ShardSet, output_configuration: Optional[Mapping[str, Any]],
                content_intervals: Optional[Sequence[str]], split_key: Optional[str], check: bool) -> None:
    """The names the user passed, against the shard set (see the module docstring)."""
    index = shards.index
    interval_names = sorted(index.intervals)
    keys = sorted(set(index.metadata) | set(index.free_form))
    given = dict(output_configuration or {})
    wanted: List[Tuple[str, str, List[str]]] = []  # (what, name, candidates)
    wanted += [("output_configuration['masks']", n, interval_names) for n in given.get("masks") or []]
    wanted += [("content_intervals", n, interval_names) for n in content_intervals or []]
    wanted += [("output_configuration['meta']", k, keys) for k in given.get("meta") or []]
    for what, key in (("output_configuration['label']", given.get("label")), ("split_key", split_key)):
        if key is not None:
            wanted.append((what, key, sorted(index.metadata)))
            if key in index.free_form:
                raise ValueError(f"{what}={key!r}: metadata[{key!r}] has more than {MAX_VOCABULARY} distinct "
                                 f"values in {shards.root} (free-form, like a transcript), so it is not a label")
    for what, name, candidates in wanted:
        if name not in candidates and check:
            raise ValueError(f"{what}: {name!r} is not in {shards.root}: {_known(what, candidates)}"
                             f"{_suggestion(name, candidates)}. Pass check_names=False to accept a name the data "
                             "does not have (yet)")


def _known(what: str, candidates: List[str]) -> str:
    kind = "interval names" if "masks" in what or "content" in what else "metadata keys"
    return f"its {kind} are {', '.join(map(repr, candidates))}" if candidates else f"it has no {kind}"


def _suggestion(name: str, candidates: List[str]) -> str:
    same_case = [c for c in candidates if c.lower() == str(name).lower()]
    close = same_case or difflib.get_close_matches(str(name), candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def split_of(split: Sequence[float], subset: Optional[int], key: Optional[str]) -> Split:
    """The split (fractions that sum to 1, checked by the split rule: rules/splits.py) and its bounds, the subset
    and the key: without `subset`, a split of several parts takes part 0 and says so."""
    bounds = normalize_split(split)
    if subset is None:
        subset = 0
        if len(bounds) > 1:
            warnings.warn(f"split={tuple(split)} has {len(bounds)} parts and no subset was given: this dataset is "
                          f"subset 0 ({bounds[0]:.0%} of the files); make the others with the same split and "
                          f"subset=1{', ..., ' + str(len(bounds) - 1) if len(bounds) > 2 else ''}", stacklevel=4)
    if not 0 <= subset < len(bounds):
        raise ValueError(f"subset={subset} but split {tuple(split)} has {len(bounds)} subsets")
    return Split(tuple(split), bounds, subset, key)


def choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def window_length(name: str, seconds: Any, sample_rate: int, hop_length: int) -> int:
    """`seconds` (the option `name`) in whole frames: a finite number giving 1 to MAX_WINDOW_FRAMES frames.
    inf or nan would otherwise be an OverflowError deep in the frame arithmetic."""
    if not is_finite_number(seconds) or not seconds > 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {shown(seconds)}")
    exact = float(seconds) * sample_rate / hop_length  # inf for seconds near the largest float
    if not 0.5 < exact <= MAX_WINDOW_FRAMES:  # what rounds to 1 to MAX_WINDOW_FRAMES frames
        raise ValueError(f"{name}={seconds!r} is {exact:.4g} frames at {sample_rate} Hz with hop {hop_length}: "
                         f"need 1 to {MAX_WINDOW_FRAMES} (at least {hop_length / sample_rate:g} s)")
    return window_frames(seconds, sample_rate, hop_length)


def content_ratio(name: str, value: Any) -> float:
    """The window rule's content ratio (the option `name`): a finite number in [0, 1] (above 1 no window could
    pass, and nan would let every window through)."""
    if not is_finite_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] (the share of a window in content intervals), "
                         f"got {shown(value)}")
    return float(value)
