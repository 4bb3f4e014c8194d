"""vak's `make_spectrogram_files_from_audio_files`, for vak users: one `.spect.npz` per audio file.

Same call, same files: for each audio file, `OUTPUT_DIR/<file name>.spect.npz` with the spectrogram (2-d,
frequency x time), the centres of its frequency bins (Hz) and time bins (s) and the audio path, under vak's key
names or the ones `spect_params` gives; the sorted paths are returned. The arrays are vak's own
(write/vak_spectrogram.py: float64, frames from sample 0, the band-pass), at the file's own sample rate;
`frames="centred"` writes the shards' linear spectrogram instead (write/linear.py: centred frames, float32).
Annotation files come from write/annotations.py (crowsetta's formats, without crowsetta); `labelset` skips
files with other labels, as vak does. Files that cannot be used are skipped with a warning naming them and the
problem; the others are written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import soundfile as sf

from .errors import BadInput, SpgError, first_line, printable
from .format.features import FeatureConfig
from .write.annotations import Annotation, annotation_format, labelset_to_set, read_annotation
from .write.audio import check_audio_file, probe, read_audio
from .write.bandpass import band_passed
from .write.executors import local_executor
from .write.inputs import audio_extension
from .write.linear import LinearSpectrogram
from .write.vak_spectrogram import vak_spectrogram

logger = logging.getLogger(__name__)

SPECT_NPZ_EXTENSION = ".spect.npz"
FRAMES = ("vak", "centred")
PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class SpectParams:
    """vak's `spect_params` (its defaults): STFT size and step in samples, [low, high) Hz band, threshold,
    transform ("log_spect", "log_spect_plus_one", "log" or None) and the npz key names."""

    fft_size: int = 512
    step_size: int = 64
    freq_cutoffs: Optional[Tuple[float, float]] = None
    thresh: Optional[float] = None
    transform_type: Optional[str] = None
    spect_key: str = "s"
    freqbins_key: str = "f"
    timebins_key: str = "t"
    audio_path_key: str = "audio_path"

    @classmethod
    def from_any(cls, spect_params: Any) -> "SpectParams":
        """A dict, or any object with these attributes (vak's SpectParamsConfig)."""
        known = [f.name for f in dataclasses.fields(cls)]
        if spect_params is None:
            return cls()
        if isinstance(spect_params, Mapping):
            unknown = sorted(set(spect_params) - set(known))
            if unknown:
                raise SpgError(f"spect_params: unknown keys {', '.join(unknown)} (known: {', '.join(known)})")
            values = dict(spect_params)
        else:
            values = {name: getattr(spect_params, name) for name in known if hasattr(spect_params, name)}
        if values.get("freq_cutoffs") is not None:
            values["freq_cutoffs"] = tuple(values["freq_cutoffs"])
        params = cls(**values)
        keys = [params.spect_key, params.freqbins_key, params.timebins_key, params.audio_path_key]
        if len(set(keys)) != 4 or not all(isinstance(k, str) and k for k in keys):
            raise SpgError(f"spect_params: the four key names must be distinct non-empty strings, got {keys}")
        return params

    def features(self, sample_rate: int) -> FeatureConfig:
        """The feature parameters of a file at `sample_rate` (vak computes at each file's own rate): the shards'
        linear spectrogram, with vak's band-pass when there are cutoffs."""
        low, high = self.freq_cutoffs if self.freq_cutoffs is not None else (0.0, None)
        try:
            return FeatureConfig(sample_rate=sample_rate, n_fft=self.fft_size, hop_length=self.step_size,
                                 f_min=float(low), f_max=None if high is None else float(high), kind="linear",
                                 thresh=self.thresh, transform_type=self.transform_type, storage_dtype="float32",
                                 bandpass=self.freq_cutoffs is not None)
        except ValueError as exc:
            raise SpgError(f"spect_params: {exc}") from None


def make_spectrogram_files_from_audio_files(
    audio_format: str,
    spect_params: Any,
    output_dir: PathLike,
    audio_dir: Optional[PathLike] = None,
    audio_files: Optional[Sequence[PathLike]] = None,
    annot_list: Optional[Sequence[Any]] = None,
    audio_annot_map: Optional[Mapping[PathLike, Any]] = None,
    annot_format: Optional[str] = None,
    labelset: Union[str, Sequence[Any], None] = None,
    dask_bag_kwargs: Optional[Dict[str, Any]] = None,
    frames: str = "vak",
) -> List[str]:
    """Write one `.spect.npz` per audio file into `output_dir`; return their paths, sorted.

    Annotations (`annot_list`, `audio_annot_map`) are annotation file paths read as `annot_format`, or
    crowsetta Annotation objects. `dask_bag_kwargs` runs the files as a dask bag (`pip install
    "spgdataset[dask]"`), as vak does: in threads, or on the Dask client the caller has made; without it they
    run in local worker processes. `frames`: "vak" (vak's arrays) or "centred" (the shards' linear spectrogram).
    """
    if frames not in FRAMES:
        raise SpgError(f"frames must be one of {', '.join(map(repr, FRAMES))}, got {frames!r}")
    extension = audio_extension(audio_format)
    given = [x is not None for x in (audio_dir, audio_files, audio_annot_map)]
    if not any(given):
        raise SpgError("must specify one of: audio_dir, audio_files, audio_annot_map")
    if sum(given) > 1:
        raise SpgError("give only one of audio_dir, audio_files and audio_annot_map: unclear which files to use")
    if annot_list is not None and audio_annot_map is not None:
        raise SpgError("received values for annot_list and audio_annot_map, unclear which annotations to use")
    params = SpectParams.from_any(spect_params)
    params.features(int(2 * max(params.freq_cutoffs or (8000,))) + 2)  # mistakes fail here, not once per file
    _check_output_dir(output_dir)
    wanted = labelset_to_set(labelset) if labelset is not None else None

    files = _audio_files(audio_format, extension, audio_dir, audio_files, audio_annot_map)
    annotations, skipped = _annotations(files, annot_list, audio_annot_map, annot_format)
    if wanted is not None and (annot_list is not None or audio_annot_map is not None):
        for path, annotation in list(annotations.items()):
            extra = sorted(set(annotation.labels) - wanted)
            if extra:
                skipped.append(BadInput(path, f"labels {extra} not in labelset; skipped", kind="filtered"))
                del annotations[path]
        files = [f for f in files if f in annotations]
    files = [f for f in files if f not in {bad.path for bad in skipped}]
    _check_names(files)

    total = len(files) + len(skipped)
    _make_output_dir(output_dir)
    jobs = [(os.path.basename(f), (f, str(output_dir), params, frames)) for f in files]
    results = _run(jobs, dask_bag_kwargs)
    written: List[str] = []
    for result in results:
        (skipped if isinstance(result, BadInput) else written).append(result)
    for bad in skipped:
        logger.warning("%s", bad)
    problems = [b for b in skipped if b.kind == "bad"]
    if problems:
        warnings.warn(f"{len(problems)} of {total} audio files were skipped: "
                      + "; ".join(str(b) for b in problems[:5]) + (" ..." if len(problems) > 5 else ""))
    return sorted(written)


def _check_output_dir(output_dir: PathLike) -> None:
    """Before any file is read: output_dir may be missing (it is made) but not a file (os.makedirs would say only
    FileExistsError)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise SpgError(f"output_dir {printable(os.fspath(output_dir))}: is a file, not a folder (the .spect.npz "
                       "files are written into a folder)")


def _make_output_dir(output_dir: PathLike) -> None:
    """os.makedirs, its error said with the argument's name (a path through a file, no permission)."""
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as exc:
        raise SpgError(f"output_dir {printable(os.fspath(output_dir))}: cannot make the folder: "
                       f"{exc.strerror or exc}") from None


def _audio_files(audio_format: str, extension: str, audio_dir: Optional[PathLike],
                 audio_files: Optional[Sequence[PathLike]], audio_annot_map: Optional[Mapping[Any, Any]]) -> List[str]:
    """The audio files as vak takes them: `audio_format` files under audio_dir (subfolders too), or the list
    (all of that format), or the map's keys."""
    if audio_dir is not None:
        if not os.path.isdir(audio_dir):
            raise SpgError(f"{audio_dir}: audio_dir is not a directory")
        return sorted(str(p) for p in Path(audio_dir).rglob("*") if p.suffix.lower() == extension and p.is_file())
    if audio_files is not None:
        files = [str(f) for f in audio_files]
        other = sorted({Path(f).suffix.lower() for f in files} - {extension})
        if other:
            raise SpgError(f"audio_files should all be {audio_format} files, found {', '.join(other)}")
        return files
    return [str(f) for f in audio_annot_map or {}]


def _annotations(files: List[str], annot_list: Optional[Sequence[Any]], audio_annot_map: Optional[Mapping[Any, Any]],
                 annot_format: Optional[str]) -> Tuple[Dict[str, Annotation], List[BadInput]]:
    """{audio path: Annotation} for the files that have one, and the files whose annotation did not read."""
    if annot_list is None and audio_annot_map is None:
        return {}, []
    fmt = annotation_format(annot_format) if annot_format is not None else None
    found: Dict[str, Annotation] = {}
    skipped: List[BadInput] = []
    if audio_annot_map is not None:
        pairs = [(str(audio), annot) for audio, annot in audio_annot_map.items()]
    else:
        pairs = _pair_annotations(files, list(annot_list or []))
    for audio, annot in pairs:
        try:
            found[audio] = _as_annotation(annot, fmt)
        except BadInput as bad:
            skipped.append(BadInput(audio, f"annotation {bad.path}: {bad.problem}"))
    missing = [f for f in files if f not in found and f not in {b.path for b in skipped}]
    skipped += [BadInput(f, "no annotation for this file in annot_list", kind="filtered") for f in missing]
    return found, skipped


def _pair_annotations(files: List[str], annot_list: List[Any]) -> List[Tuple[str, Any]]:
    """Which annotation goes with which audio file: a crowsetta Annotation names its file (notated_path);
    an annotation file goes with the audio file it is named after (`a.wav.csv` or `a.csv` for `a.wav`)."""
    by_name: Dict[str, List[str]] = {}
    for f in files:
        by_name.setdefault(os.path.basename(f), []).append(f)
        by_name.setdefault(os.path.splitext(os.path.basename(f))[0], []).append(f)
    pairs = []
    for annot in annot_list:
        notated = getattr(annot, "notated_path", None) or getattr(annot, "audio_path", None)
        if notated is not None:
            matches = [f for f in files if os.path.basename(f) == os.path.basename(str(notated))]
        else:
            stem = os.path.splitext(os.path.basename(str(annot)))[0]
            matches = by_name.get(stem, [])
        if len(matches) != 1:
            raise SpgError(f"annotation {getattr(annot, 'annot_path', annot)}: "
                           f"{'no audio file' if not matches else 'several audio files'} match it")
        pairs.append((matches[0], annot))
    return pairs


def _as_annotation(annot: Any, fmt: Optional[str]) -> Annotation:
    seq = getattr(annot, "seq", None)
    if seq is not None:  # a crowsetta Annotation: take its sequence as it is
        return Annotation(str(getattr(annot, "annot_path", "annotation")), tuple(map(float, seq.onsets_s)),
                          tuple(map(float, seq.offsets_s)), tuple(str(label) for label in seq.labels))
    if fmt is None:
        raise SpgError("annotation files need annot_format (simple-seq, aud-seq or textgrid)")
    return read_annotation(str(annot), fmt)


def _check_names(files: List[str]) -> None:
    """vak names each npz after its audio file alone: two files of one name would overwrite each other."""
    seen: Dict[str, str] = {}
    for f in files:
        name = os.path.basename(f)
        if name in seen:
            raise SpgError(f"{seen[name]} and {f} would both be written as {name}{SPECT_NPZ_EXTENSION}")
        seen[name] = f


def _run(jobs: List[Tuple[str, Tuple[Any, ...]]], dask_bag_kwargs: Optional[Dict[str, Any]]) -> List[Any]:
    if dask_bag_kwargs is not None:
        try:
            import dask.bag
            import dask.threaded
        except ImportError:
            raise SpgError('dask_bag_kwargs needs dask: pip install "spgdataset[dask]"') from None
        bag = dask.bag.from_sequence([args for _, args in jobs], **dask_bag_kwargs).starmap(spect_file)
        # the caller's client or dask.config's scheduler when there is one; else threads, given as the function,
        # not its name: asked by name, dask imports distributed (0.5 s) to look for a client
        chosen = _has_dask_client() or dask.config.get("scheduler", None) is not None
        return list(bag.compute(scheduler=None if chosen else dask.threaded.get))
    executor = local_executor(min(os.cpu_count() or 1, max(1, len(jobs) // 4)))
    try:
        return [result for _, result in sorted(executor.run(spect_file, jobs), key=lambda r: r[0])]
    finally:
        executor.close()


def _has_dask_client() -> bool:
    """Whether the caller made a distributed Client (the bag then runs on it). Without one (and without a
    scheduler set in dask.config), threads: dask's default for bags is processes, which start by importing the caller's script (a BrokenProcessPool without an
    `if __name__ == "__main__":` guard) and then torch, for seconds per process. A client needs distributed
    imported: when it is not, no import of it (0.4 s) just to ask."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.default_client()
    except ValueError:
        return False
    return True


def spect_file(audio_path: str, output_dir: str, params: SpectParams, frames: str = "vak") -> Union[str, BadInput]:
    """One audio file's npz (written whole under a temporary name, then renamed), or what went wrong."""
    try:
        spect, freqs, times = (_vak_arrays if frames == "vak" else _centred_arrays)(audio_path, params)
        arrays: Dict[str, Any] = {  # Any: to a type checker, savez's **arrays could be its allow_pickle flag
            params.spect_key: spect, params.freqbins_key: freqs, params.timebins_key: times,
            params.audio_path_key: np.array(audio_path)}
        target = os.path.join(os.path.normpath(output_dir), os.path.basename(audio_path) + SPECT_NPZ_EXTENSION)
        temporary = f"{target}.{os.getpid()}.tmp"
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
        os.replace(temporary, target)
        return target
    except BadInput as bad:
        return bad
    except SpgError as exc:
        return BadInput(audio_path, str(exc))
    except OSError as exc:
        return BadInput(audio_path, f"cannot write its npz: {exc.strerror or exc}")


def _vak_arrays(audio_path: str, params: SpectParams) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """vak's (s, f, t): the file read as vak reads it (soundfile, float64, its own rate; channels averaged,
    where vak would fail)."""
    check_audio_file(audio_path, audio_path)
    try:
        audio, rate = sf.read(audio_path, dtype="float64", always_2d=True)
    except Exception as exc:  # libsndfile's errors have several types
        raise BadInput(audio_path, f"corrupt or unreadable audio: {first_line(exc)}") from None
    if not len(audio):
        raise BadInput(audio_path, "audio is empty (0 samples)")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if not np.isfinite(mono).all():
        raise BadInput(audio_path, "audio contains NaN or infinite samples")
    params.features(int(rate))  # the band and the transform checked at this rate
    return vak_spectrogram(mono, int(rate), params.fft_size, params.step_size, params.thresh, params.transform_type,
                           params.freq_cutoffs)


def _centred_arrays(audio_path: str, params: SpectParams) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shards' linear spectrogram of the file at its own rate (float32, centred frames)."""
    _, rate = probe(audio_path)
    features = params.features(rate)
    audio, _, _, _ = read_audio(audio_path, rate)
    if len(audio) < features.min_samples:
        raise BadInput(audio_path, f"audio too short: {len(audio)} samples, fft_size={params.fft_size} needs "
                                   f"{features.min_samples}")
    if features.bandpass:
        audio = band_passed(audio, features.f_min, features.band_top, rate).astype(np.float32)
    spect = LinearSpectrogram(features)(audio)
    return spect, features.freq_bins(), features.time_bins(spect.shape[1])
