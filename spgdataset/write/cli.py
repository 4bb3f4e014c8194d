"""`spg-shard AUDIO_ROOT [METADATA_JSON] OUTPUT_DIR`: the command line around write_shards()."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import SpgError, command_line, integer_option
from ..format.features import FeatureConfig, config_names, load_config
from .inputs import read_file_list
from .job import DEFAULT_MAX_SHARD_BYTES, write_shards
from .plan import segment_frames
from .progress import format_duration

FEATURE_FLAGS = {  # flag -> FeatureConfig field
    "sample_rate": "sample_rate", "n_fft": "n_fft", "hop_length": "hop_length", "n_mels": "n_mels",
    "f_min": "f_min", "f_max": "f_max", "dtype": "storage_dtype", "spectrogram": "kind", "thresh": "thresh",
    "transform_type": "transform_type", "bandpass": "bandpass",
}
LARGEST = 2**63 - 1  # counts and byte sizes are stored as int64
CORES = os.cpu_count() or 1  # --workers and --scheduler local:N beyond this are a mistake, not more speed


def megabytes(text: str) -> float:
    """argparse type of --max-shard-mb: a finite number of MiB giving 1 to LARGEST bytes."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1 <= value * 2**20 <= LARGEST):
        raise argparse.ArgumentTypeError(f"must be a finite number of MiB, from one byte to {LARGEST / 2**20:.3g} "
                                         f"MiB, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spg-shard",
        description="Turn a folder of audio (+ optional metadata.json) into spectrogram WebDataset shards "
                    "with manifest.json. Rerunning the same command resumes a killed run.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="AUDIO_ROOT [METADATA_JSON] OUTPUT_DIR")
    p.add_argument("--files", metavar="LIST", help="text file of audio paths (relative to AUDIO_ROOT) to take")
    p.add_argument("--config", metavar="NAME|JSON",
                   help=f"feature config: a shipped one by name ({', '.join(config_names())}) or a JSON file's path; "
                        "flags override it")
    _feature_arguments(p)
    p.add_argument("--with-audio", action="store_true", help="also store the resampled mono audio (FLAC, lossless)")
    p.add_argument("--max-shard-mb", type=megabytes, default=DEFAULT_MAX_SHARD_BYTES / 2**20,
                   help="shard size limit in MiB (default %(default)s)")
    p.add_argument("--max-shard-files", type=integer_option(1, LARGEST), help="shard size limit in files")
    p.add_argument("--audio-format", metavar="EXT", help="take only audio files of this extension (wav, flac, ...)")
    p.add_argument("--annot-format", choices=["simple-seq", "aud-seq", "audacity", "textgrid"],
                   help="read each audio file's annotation file beside it (a.wav.csv or a.csv, ...): every label "
                        "becomes an interval name")
    p.add_argument("--labelset", metavar="LABELS",
                   help="vak's labelset: skip files whose annotations hold other labels (\"iabc\": one label a "
                        "character; \"range: 1-9\")")
    p.add_argument("--keep", action="append", default=[], metavar="KEY=V1,V2",
                   help="keep only files whose metadata KEY is one of the values (repeatable)")
    p.add_argument("--segment-sec", type=float, default=300.0,
                   help="files longer than this plus the overlap are stored in segments owning this many seconds "
                        "(default %(default)s)")
    p.add_argument("--segment-overlap-sec", type=float, default=30.0,
                   help="seconds a segment holds beyond what it owns: the longest window a reader may take from "
                        "such files (default %(default)s)")
    p.add_argument("--workers", type=integer_option(1, CORES, " (the cores of this machine)"),
                   help="processes computing spectrograms (default: all cores)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on Dask instead: tcp://HOST:8786 (a running scheduler whose workers see AUDIO_ROOT and "
                        "OUTPUT_DIR) or local:N (N worker processes here); pip install \"spgdataset[dask]\"")
    p.add_argument("--part", metavar="I/N", help="write only part I of N (0-based), for job arrays")
    p.add_argument("--overwrite", action="store_true", help="replace shards of a different job in OUTPUT_DIR")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="take input paths that lead outside AUDIO_ROOT (../x.wav, absolute paths, symlinks out)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line and no line per file left out (the summary counts them, manifest.json's "
                        "'report' lists them; --dry-run still prints its report)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every file (decoded, as a run does) and print the report and the size the shards "
                        "would take; write nothing")
    return p


def _feature_arguments(p: argparse.ArgumentParser) -> None:
    """The FeatureConfig flags (FEATURE_FLAGS): None unless given, so that --config's values stay."""
    p.add_argument("--sample-rate", type=int, help="target rate in Hz (default 16000); audio is resampled to it")
    p.add_argument("--n-fft", type=int, help="FFT size in samples (default 400)")
    p.add_argument("--hop-length", type=int, help="hop in samples (default 160)")
    p.add_argument("--n-mels", type=int, help="mel bins (default 80)")
    p.add_argument("--f-min", type=float, help="lowest frequency in Hz (default 0)")
    p.add_argument("--f-max", type=float, help="highest frequency in Hz (default sample_rate/2); a linear "
                                               "spectrogram keeps the bins in [f-min, f-max)")
    p.add_argument("--spectrogram", choices=["logmel", "linear"], help="kind (default logmel); linear is vak's "
                                                                         "STFT power density")
    p.add_argument("--transform-type", choices=["log_spect", "log_spect_plus_one", "log"],
                   help="vak's transform of a linear spectrogram (default none)")
    p.add_argument("--thresh", type=float, help="vak's threshold of a linear spectrogram (default none)")
    p.add_argument("--bandpass", action="store_const", const=True, default=None,
                   help="linear spectrogram: filter the audio first with vak's 5th-order Butterworth band-pass "
                        "on [f-min, f-max], as vak does with freq_cutoffs (needs scipy)")
    p.add_argument("--dtype", choices=["float16", "float32"], help="storage dtype (default float16; float32 for a "
                                                                   "linear spectrogram without transform)")


def parse_keep(values: Sequence[str]) -> Optional[Dict[str, List[str]]]:
    keep: Dict[str, List[str]] = {}
    for value in values:
        key, sep, allowed = value.partition("=")
        if not sep or not key or not allowed:
            raise SpgError(f"--keep {value!r}: expected KEY=VALUE1,VALUE2")
        keep.setdefault(key, []).extend(v for v in allowed.split(",") if v)
    return keep or None


def parse_part(value: Optional[str]) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise SpgError(f"--part {value!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n <= LARGEST:
        raise SpgError(f"--part {value!r}: need 0 <= I < N")
    return i, n


def check_scheduler(value: Optional[str]) -> None:
    """--scheduler local:N starts N processes here: N from 1 to the machine's cores (a remote address is the
    cluster's business)."""
    if value is not None and value.startswith("local:"):
        n = value[len("local:"):]
        if not (n.isdigit() and 1 <= int(n) <= CORES):
            raise SpgError(f"--scheduler {value}: expected local:N with N from 1 to {CORES} (the cores of this "
                           "machine)")


def features_from_args(args: argparse.Namespace) -> FeatureConfig:
    """The feature parameters of --config and the flags; a bad one is an SpgError naming the options it is about."""
    try:
        values = dict(load_config(args.config).get("features", {})) if args.config else {}
    except ValueError as exc:
        raise SpgError(f"--config {exc}") from None  # the message starts with the file or name given
    given = []
    for flag, field in FEATURE_FLAGS.items():
        if getattr(args, flag) is not None:
            values[field] = getattr(args, flag)
            given.append((flag, field))
    try:
        return FeatureConfig.from_dict(values)
    except ValueError as exc:
        flags = [(f"--{flag.replace('_', '-')} {getattr(args, flag)}", field) for flag, field in given]
        named = [flag for flag, field in flags if re.search(rf"\b{field}\b", str(exc))]
        named = named or ([f"--config {args.config}"] if args.config else [flag for flag, _ in flags])
        raise SpgError(f"{', '.join(named)}: {exc}") from None


def checked_segments(args: argparse.Namespace, features: FeatureConfig) -> Tuple[float, float]:
    """--segment-sec, then with it --segment-overlap-sec, checked by the writer's rule (plan.segment_frames), so
    that the error names the option at fault."""
    seconds, overlap = args.segment_sec, args.segment_overlap_sec
    for flag, value, pair in (("--segment-sec", seconds, (seconds, 0.0)),
                              ("--segment-overlap-sec", overlap, (seconds, overlap))):
        try:
            segment_frames(features, *pair)
        except ValueError as exc:
            raise SpgError(f"{flag} {value}: {exc}") from None
    return seconds, overlap


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.paths) == 2:
        audio_root, metadata, output = args.paths[0], None, args.paths[1]
    elif len(args.paths) == 3:
        audio_root, metadata, output = args.paths
    else:
        parser.error("expected AUDIO_ROOT [METADATA_JSON] OUTPUT_DIR")
    keep_values, labelset = list(args.keep), args.labelset
    if labelset is not None and "=" in labelset and args.annot_format is None:  # --labelset KEY=V1,V2 before 0.3
        print(f"spg-shard: --labelset {labelset} filters by metadata: that is --keep now (--labelset is vak's set "
              "of annotation labels)", file=sys.stderr)
        keep_values, labelset = keep_values + [labelset], None
    try:  # malformed values are usage errors: argparse's message and exit code 2
        keep, part = parse_keep(keep_values), parse_part(args.part)
        check_scheduler(args.scheduler)
        features = features_from_args(args)
        segments = checked_segments(args, features)
    except SpgError as exc:
        parser.error(str(exc))
    if labelset is not None and args.annot_format is None:
        parser.error("--labelset filters files by their annotation labels: give --annot-format too "
                     "(to keep files by metadata values: --keep KEY=V1,V2)")
    if args.scheduler and args.workers:
        parser.error("--workers sets local processes; with --scheduler the Dask cluster's workers do the work")
    files = read_file_list(args.files, audio_root) if args.files else None
    options = dict(files=files, features=features, with_audio=args.with_audio,
                   max_shard_bytes=int(args.max_shard_mb * 2**20), max_shard_files=args.max_shard_files,
                   labelset=labelset, keep=keep, annot_format=args.annot_format, audio_format=args.audio_format,
                   part=part, overwrite=args.overwrite, progress=not args.quiet,
                   segments=segments,
                   allow_outside_root=args.allow_outside_root, dry_run=args.dry_run)
    if args.scheduler:
        from .cluster import dask_client, describe_client

        with dask_client(args.scheduler) as client:
            if not args.quiet:
                print(describe_client(client), file=sys.stderr)
            result = write_shards(audio_root, metadata, output, client=client, **options)
    else:
        result = write_shards(audio_root, metadata, output, workers=args.workers, **options)
    print(summary(result))
    return 0


def summary(result) -> str:
    rate = result.audio_seconds_processed / result.wall_seconds if result.wall_seconds else 0.0
    if result.dry_run:
        hours = result.audio_seconds_processed / 3600
        per_hour = result.expected_bytes / hours / 2**20 if hours else 0.0
        kinds: Dict[str, int] = {}
        for row in result.rejected:
            kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        return (f"spg-shard: dry run: {result.files_processed} files ({hours:.2f} h audio) checked in "
                f"{format_duration(result.wall_seconds)}; shards would take {result.expected_bytes / 2**20:.1f} MiB "
                f"({per_hour:.1f} MiB per audio hour); {kinds.get('bad', 0)} bad, {kinds.get('filtered', 0)} "
                f"filtered; nothing was written to {result.output_dir}")
    lines = [f"spg-shard: {result.files_processed} files ({result.audio_seconds_processed / 3600:.2f} h audio) "
             f"processed in {format_duration(result.wall_seconds)}, {rate:.0f}x real time; "
             f"{result.shards_written} shards written, {result.shards_reused} already complete"]
    if result.manifest is None:
        lines.append("part done; manifest.json is written by the run that completes the last shard of "
                     f"{result.output_dir}")
    else:
        t, counts = result.manifest["totals"], result.manifest["report"]["counts"]
        per_hour = t["bytes"] / t["hours"] / 2**20 if t["hours"] else 0.0
        lines.append(f"{result.output_dir}: {t['files']} files, {t['hours']:.2f} h, {t['shards']} shards, "
                     f"{t['bytes'] / 2**20:.1f} MiB ({per_hour:.1f} MiB per audio hour); "
                     f"{counts.get('bad', 0)} bad, {counts.get('filtered', 0)} filtered"
                     + "".join(f", {counts[kind]} {kind}{'s' * (counts[kind] != 1)}"
                               for kind in ("duplicate", "warning") if counts.get(kind))
                     + " (see manifest.json 'report')")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    command_line("spg-shard", run, argv, interrupted="interrupted; rerun the same command to resume")


if __name__ == "__main__":
    main()
