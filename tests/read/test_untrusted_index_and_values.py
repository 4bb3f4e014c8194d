"""Hostile shard sets, continued: index columns that disagree with the shards, stored values that are not
finite, sizes claimed but not held, manifest numbers past any range.

The attacker holds the whole shard folder and recomputes every digest in manifest.json, so each edit here is
made consistent with the digests (`edit_columns`, `poison`): only a check of the index against the shards' own
records, of the stored values or of the manifest's numbers can tell. The S3 twins are in tests/storage/test_s3.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import msgpack
import numpy as np
import pytest

from spgdataset import ShardError, SpectrogramDataset, SpgError, write_shards
from spgdataset.format.features import FeatureConfig
from spgdataset.format.index import DIGEST_BYTES, pack_columns
from tests.helpers import NO_MASKS, Shards

FIVE_GIB = 5 << 30
SEG = dict(window_size_sec=0.4, window_offset_sec=0.1)  # windows within the segments' 0.5 s of overlap


@pytest.fixture(scope="module")
def segmented(corpus16k, tmp_path_factory) -> str:
    """corpus16k in segments of 2.03 s with 0.5 s of overlap (format 3): most files are several rows."""
    root, meta = corpus16k
    out = tmp_path_factory.mktemp("segmented") / "out"
    write_shards(root, meta, out, workers=1, max_shard_files=3, progress=False, segments=(2.03, 0.5))
    return str(out)


@pytest.fixture(scope="module")
def float32_run(corpus16k, tmp_path_factory) -> str:
    root, meta = corpus16k
    out = tmp_path_factory.mktemp("float32") / "out"
    write_shards(root, meta, out, workers=1, max_shard_files=3, progress=False,
                 features=FeatureConfig(storage_dtype="float32"))
    return str(out)


def edit_columns(shards: Shards, edit: Callable[[Dict[str, np.ndarray]], None]) -> None:
    """Rewrite index.bin with its raw columns changed by `edit`, the manifest's index digest and size recomputed."""
    path = shards.folder / "index.bin"
    data = path.read_bytes()
    size = int.from_bytes(data[8:16], "little")
    header = msgpack.unpackb(data[16 : 16 + size], raw=False)
    columns = {name: np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy()
               for name, dtype, count, offset in header.pop("columns")}
    edit(columns)
    new = pack_columns(header, columns)
    path.write_bytes(new)
    shards.edit_manifest(lambda m: m.update(index_sha256=hashlib.sha256(new).hexdigest(), index_bytes=len(new)))


def poison(shards: Shards, name: str, value: float, update_manifest: bool = True) -> None:
    """Write `value` over one stored value (row 3, frame 5 of the shard's first spectrogram) in place: same size,
    a later mtime, and (with `update_manifest`) the manifest's sha256 recomputed."""
    path = shards.folder / name
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".spec.npy"))
    data = bytearray(path.read_bytes())
    array = np.load(io.BytesIO(bytes(data[member.offset_data : member.offset_data + member.size])))
    at = member.offset_data + member.size - array.nbytes + (3 * array.shape[1] + 5) * array.itemsize
    data[at : at + array.itemsize] = np.array(value, dtype=array.dtype).tobytes()
    before = os.stat(path)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # another version of the file
    if update_manifest:  # as a writer that stored such values would have it: the shard's and the file's digests
        digest = hashlib.sha256(bytes(data)).hexdigest()
        shards.edit_manifest(lambda m: next(s for s in m["shards"] if s["name"] == name).update(sha256=digest))
        shard = [s["name"] for s in json.loads((shards.folder / "manifest.json").read_text())["shards"]].index(name)

        def file_digest(columns: Dict[str, np.ndarray]) -> None:
            offsets, sizes = columns["member.offset"], columns["member.bytes"]
            rows = np.flatnonzero((columns["shard"] == shard) & (offsets <= at) & (at < offsets + sizes))
            row = int(rows[0])
            file_bytes = bytes(data[offsets[row] : offsets[row] + sizes[row]])
            columns["member.blake2b"].reshape(-1, DIGEST_BYTES)[row] = np.frombuffer(
                hashlib.blake2b(file_bytes, digest_size=DIGEST_BYTES).digest(), dtype=np.uint8)

        edit_columns(shards, file_digest)


def first_continued_row(columns: Dict[str, np.ndarray]) -> int:
    """A row whose next row continues its recording (a segment with a successor)."""
    return int(np.flatnonzero(columns["offset"][1:] > 0)[0])


# ---------------------------------------------------------------- row 6: index columns against the shards


READ = dict(content_intervals=["speech"], split=(0.5, 0.5), subset=0, output_configuration=NO_MASKS, batch_size=8)
WHOLE_EDITS = {
    "path_unit_permuted": (lambda c: c.update(path_unit=np.roll(c["path_unit"], 1)), "path_unit"),
    "annotated_cleared": (lambda c: c["annotated"].fill(0), "annotated"),
}


@pytest.mark.parametrize("case", sorted(WHOLE_EDITS))
def test_split_and_content_columns_are_checked_against_each_files_record(run16k, tmp_path, case):
    """A permuted path_unit moves files between subsets, a cleared `annotated` bypasses the content rule:
    the plan changes, and reading must say so before a window of it is yielded."""
    edit, field = WHOLE_EDITS[case]
    shards = Shards(run16k[0], tmp_path / "s")
    edit_columns(shards, edit)
    ds = SpectrogramDataset(str(shards), **READ)
    assert ds.windows() != SpectrogramDataset(run16k[0], **READ).windows()  # the edit matters
    with pytest.raises(ShardError, match=rf"shard-\d+\.tar: sample .*{field}"):
        list(ds)


def test_warn_mode_skips_and_counts_a_shard_whose_index_rows_disagree(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    edit_columns(shards, lambda c: c["path_unit"].__setitem__([0, 1], c["path_unit"][[1, 0]]))  # both in shard 0
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, on_error="warn", batch_size=8,
                            output_configuration=NO_MASKS)
    assert len(list(ds)) == len(ds)
    assert ds.skipped_shards == 1 and "shard-000000.tar" in ds.errors[0] and "path_unit" in ds.errors[0]


def _shift_next(columns: Dict[str, np.ndarray], by: int) -> None:
    columns["offset"][first_continued_row(columns) + 1] += by


SEGMENT_EDITS = {
    "offset_plus_1": lambda c: c["offset"].__iadd__(1),
    "offset_plus_1e9": lambda c: c["offset"].__iadd__(10**9),
    "overlapping": lambda c: _shift_next(c, -10),
    "skipping": lambda c: _shift_next(c, 10),
    "owned_shorter": lambda c: c["owned"].__setitem__(first_continued_row(c), c["owned"][first_continued_row(c)] - 1),
    "last_owns_less": lambda c: c["owned"].__setitem__(-1, c["frames"][-1] - 1),
    "other_recording": lambda c: c["path_unit"].__setitem__(first_continued_row(c) + 1, 12345),
    "columns_missing": lambda c: [c.pop("offset"), c.pop("owned")],
}


@pytest.mark.parametrize("case", sorted(SEGMENT_EDITS))
def test_segment_rows_must_tile_their_recordings_at_open(segmented, tmp_path, case):
    """Overlapping rows yield windows twice, gaps skip them, a shift puts starts at 1e9: refused at open."""
    shards = Shards(segmented, tmp_path / "s")
    edit_columns(shards, SEGMENT_EDITS[case])
    with pytest.raises(ShardError, match=r"index.bin: .*(segment|offset|owned)") as caught:
        SpectrogramDataset(str(shards), **SEG)
    assert "\n" not in str(caught.value)


def test_a_manifest_must_say_whether_its_index_has_segments(segmented, run16k, tmp_path):
    no_segments = Shards(segmented, tmp_path / "a")
    no_segments.edit_manifest(lambda m: m.pop("segments"))
    with pytest.raises(SpgError, match=r"manifest.json: segments: .*format_version 3"):
        SpectrogramDataset(str(no_segments), **SEG)
    as_format_2 = Shards(segmented, tmp_path / "b")
    as_format_2.edit_manifest(lambda m: [m.pop("segments"), m.update(format_version=2)])
    with pytest.raises(ShardError, match=r"index.bin: .*offset.*format 3"):
        SpectrogramDataset(str(as_format_2))
    whole_as_3 = Shards(run16k[0], tmp_path / "c")
    whole_as_3.edit_manifest(lambda m: m.update(format_version=3, segments={"frames": 300, "overlap": 50}))
    with pytest.raises(ShardError, match=r"index.bin: .*format 3.*offset"):
        SpectrogramDataset(str(whole_as_3))


def test_segments_stripped_to_a_format_2_set_are_caught_when_read(segmented, tmp_path):
    """Columns dropped and the manifest made format 2: each segment would be read as a whole file, its
    overlap yielded twice. The shard's own records say they are segments."""
    shards = Shards(segmented, tmp_path / "s")
    edit_columns(shards, lambda c: [c.pop("offset"), c.pop("owned")])
    shards.edit_manifest(lambda m: [m.pop("segments"), m.update(format_version=2)])
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, output_configuration=NO_MASKS)
    with pytest.raises(ShardError, match=r"shard-\d+\.tar: sample .*segment"):
        list(ds)


def test_segment_places_are_checked_against_each_segments_record(segmented, tmp_path):
    """A re-tiling that still tiles (one frame moved from a segment to the next) passes at open; the shard's
    records say where each segment stands, so reading refuses it (its windows would be one frame off)."""
    shards = Shards(segmented, tmp_path / "s")

    def retile(c: Dict[str, np.ndarray]) -> None:
        row = first_continued_row(c)
        c["owned"][row] -= 1
        c["offset"][row + 1] -= 1

    edit_columns(shards, retile)
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, output_configuration=NO_MASKS, **SEG)
    with pytest.raises(ShardError, match=r"shard-\d+\.tar: sample .*(offset|owned)"):
        list(ds)


# ---------------------------------------------------------------- row 7: stored values and statistics


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_stored_values_are_shard_errors_that_warn_mode_skips(run16k, tmp_path, value):
    shards = Shards(run16k[0], tmp_path / "s")
    poison(shards, "shard-000001.tar", value)
    kwargs = dict(window_content_ratio=0, batch_size=8, output_configuration={"masks": []})
    with pytest.raises(ShardError, match=r"shard-000001.tar: sample .*not finite"):
        list(SpectrogramDataset(str(shards), **kwargs))
    warn = SpectrogramDataset(str(shards), on_error="warn", **kwargs)
    batches = list(warn)
    assert len(batches) == len(warn) and warn.skipped_shards == 1
    assert all(np.isfinite(b["spectrogram"].numpy()).all() for b in batches)


def test_a_bad_shard_read_in_two_runs_is_skipped_once(tmp_path):
    """The epoch's first chunk (8 files) is read on its own, then the rest of the shard it ends in: when that
    shard is bad, warn mode skips it once (one message, one count), not once per run, and tries it again the
    next epoch."""
    from spgdataset.demo import make_corpus

    metadata = make_corpus(tmp_path / "audio", 60, seed=2, min_seconds=3, max_seconds=5)
    write_shards(tmp_path / "audio", metadata, tmp_path / "out", max_shard_files=6, workers=1, progress=False)
    shards = Shards(str(tmp_path / "out"), tmp_path / "s")
    kwargs = dict(window_content_ratio=0, batch_size=8, output_configuration={"masks": []}, on_error="warn")
    probe = SpectrogramDataset(str(shards), **kwargs)
    order = probe.epoch_order(0)
    shard_of = probe.shards.index.shard[probe.selection.files[order.files]]
    last = int(shard_of[order.chunk_files[1] - 1])  # the shard the first chunk ends in ...
    assert last in shard_of[order.chunk_files[1] :].tolist()  # ... holds files of later chunks too
    name = probe.shards.manifest.shards[last].name
    poison(shards, name, float("nan"), update_manifest=False)  # its sha256 no longer matches: every read fails
    ds = SpectrogramDataset(str(shards), **kwargs)
    assert sum(len(b["key"]) for b in ds) == ds.num_windows()
    assert ds.skipped_shards == 1 and len(ds.errors) == 1 and name in ds.errors[0]
    assert sum(len(b["key"]) for b in ds) == ds.num_windows() and ds.skipped_shards == 2


def test_the_values_check_runs_again_for_another_version_of_a_shard(run16k, tmp_path):
    """Checked once per file version and process: a shard changed between epochs is checked again, even
    with verify=False (no sha256)."""
    shards = Shards(run16k[0], tmp_path / "s")
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, batch_size=8, verify=False,
                            output_configuration={"masks": []})
    assert len(list(ds)) == len(ds)
    poison(shards, "shard-000002.tar", float("nan"), update_manifest=False)
    ds.set_epoch(1)
    with pytest.raises(ShardError, match=r"shard-000002.tar: sample .*not finite"):
        list(ds)


@pytest.mark.parametrize("fixture,field,value", [
    ("run16k", "mean", 1e308), ("run16k", "mean", -70000.0), ("run16k", "std", 1e308), ("run16k", "std", 65505.0),
    ("float32_run", "mean", 1e34), ("float32_run", "std", 3e38)])
def test_statistics_beyond_the_storage_range_are_refused(request, tmp_path, fixture, field, value):
    source = request.getfixturevalue(fixture)
    shards = Shards(source[0] if isinstance(source, tuple) else source, tmp_path / "s")
    shards.edit_manifest(lambda m: m["stats"][field].__setitem__(3, value))
    with pytest.raises(SpgError, match=rf"manifest.json: stats.{field}: .*range"):
        SpectrogramDataset(str(shards))


@pytest.mark.parametrize("fixture,limit", [("run16k", 65504.0), ("float32_run", 2.0**110)])
def test_normalising_at_the_storage_limits_stays_finite(request, tmp_path, fixture, limit):
    """The largest stored value and mean the checks let through, with std 0 (clamped at 1e-5 where the reader
    normalises): every output finite. Twice that value is refused where float32 storage can hold it."""
    source = request.getfixturevalue(fixture)
    source = source[0] if isinstance(source, tuple) else source
    shards = Shards(source, tmp_path / "s")
    poison(shards, "shard-000000.tar", limit)
    shards.edit_manifest(lambda m: [m["stats"]["mean"].__setitem__(3, -limit), m["stats"]["std"].__setitem__(3, 0.0)])
    ds = SpectrogramDataset(str(shards), window_content_ratio=0, batch_size=8, normalize=True, shuffle=False,
                            output_configuration={"masks": []})
    top = max(float(b["spectrogram"][:, 3].max()) for b in ds)
    assert math.isfinite(top) and top >= 2 * limit / 1e-5 * 0.999
    if fixture == "float32_run":
        poison(shards, "shard-000000.tar", 2 * limit)
        with pytest.raises(ShardError, match=r"shard-000000.tar: sample .*range"):
            list(SpectrogramDataset(str(shards), window_content_ratio=0, batch_size=8,
                                    output_configuration={"masks": []}))


# ---------------------------------------------------------------- row 9: sizes claimed, never allocated


CAPPED_READ = """
import resource, sys, time
from spgdataset import ShardError, SpectrogramDataset

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

ds = SpectrogramDataset(sys.argv[1], window_content_ratio=0, shuffle=False,
                        output_configuration={"spectrogram": False, "masks": []})
cap = vm_bytes() + (3 << 30)  # what is mapped now (torch and all) + 3 GiB: less than the 5 GiB claimed
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
started = time.monotonic()
try:
    list(ds)
    print("no error")
except ShardError as exc:
    print(f"{time.monotonic() - started:.2f} {exc}")
"""


def capped_read(source: str, env: Optional[Dict[str, str]] = None) -> Tuple[float, str]:
    """(seconds, ShardError message) of one epoch over `source` in a fresh process whose address space is
    capped at 3 GiB above what it maps after opening the dataset: a claimed 5 GiB allocated up front fails."""
    done = subprocess.run([sys.executable, "-c", CAPPED_READ, source], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, _, message = done.stdout.strip().splitlines()[-1].partition(" ")
    assert seconds != "no", "the epoch went through"
    return float(seconds), message


def test_a_claimed_size_is_refused_without_allocating_it(run16k, tmp_path):
    shards = Shards(run16k[0], tmp_path / "s")
    held = shards.manifest["shards"][0]["bytes"]
    shards.edit_manifest(lambda m: m["shards"][0].update(bytes=FIVE_GIB))
    seconds, message = capped_read(str(shards))
    assert f"shard-000000.tar: {held} bytes, the manifest says {FIVE_GIB}" in message, message
    assert seconds < 10


# ---------------------------------------------------------------- row 11: every manifest number


FUZZ = [1e30, 10**30, 10**400, -1, float("nan"), True, "1"]
ACCEPTED = {("stats", "mean", 0): [-1], ("features", "log_eps"): [1e30, 10**30], ("with_audio",): [True]}


def numeric_fields(value: Any, path: Tuple[Any, ...] = ()) -> List[Tuple[Any, ...]]:
    """Paths of the manifest's numbers (the first of each list, one shard), and with_audio."""
    if isinstance(value, dict):
        return [p for k, v in value.items() if k != "labels" for p in numeric_fields(v, path + (k,))]
    if isinstance(value, list):
        return numeric_fields(value[0], path + (0,)) if value and path[-1] != "files" else []
    number = isinstance(value, (int, float)) and (not isinstance(value, bool) or path == ("with_audio",))
    return [path] if number else []


def _set(manifest: Dict[str, Any], path: Tuple[Any, ...], value: Any) -> None:
    target = manifest
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value


def test_every_manifest_number_out_of_range_is_one_spg_error_naming_it(segmented, tmp_path):
    shards = Shards(segmented, tmp_path / "s")
    original = shards.manifest
    fields = numeric_fields(original)
    assert {("segments", "overlap"), ("shards", 0, "bytes"), ("totals", "hours"), ("index_bytes",),
            ("features", "sample_rate"), ("stats", "std", 0), ("format_version",)} <= set(fields)
    wrong = []
    for path in fields:
        for value in FUZZ:
            manifest = json.loads(json.dumps(original))
            _set(manifest, path, value)
            (shards.folder / "manifest.json").write_text(json.dumps(manifest))
            name = next(str(p) for p in reversed(path) if isinstance(p, str))
            try:
                SpectrogramDataset(str(shards), window_content_ratio=0, **SEG)
            except SpgError as exc:
                if value in ACCEPTED.get(path, []) or name not in str(exc) or "\n" in str(exc):
                    wrong.append((path, value, str(exc)))
            except Exception as exc:  # noqa: BLE001 (the point: no other type)
                wrong.append((path, value, f"{type(exc).__name__}: {exc}"))
            else:
                if value not in ACCEPTED.get(path, []):
                    wrong.append((path, value, "accepted"))
    assert wrong == []


@pytest.mark.parametrize("field,value", [("sample_rate", 10**30), ("sample_rate", 10_000_001), ("n_fft", 2**20 + 1),
                                         ("hop_length", 2**20 + 1), ("n_mels", 2**19 + 2), ("f_min", 10**400)])
def test_feature_parameters_have_upper_bounds(field, value):
    with pytest.raises(ValueError, match=field):
        FeatureConfig(**{field: value})


def test_the_largest_feature_parameters_are_accepted_with_unchanged_fingerprints():
    FeatureConfig(sample_rate=10_000_000, n_fft=2**20, hop_length=2**20, n_mels=2**19 + 1)
    assert FeatureConfig().fingerprint() == "07c14d79c32895ff"
