"""Numbers from the command line and the Python API: inf, nan, negative, zero and absurd values are a one-line
usage error naming the option (exit code 2, never a traceback), or a ValueError naming the argument.

Most values go through `spgdataset.write.cli.run` (and `spgdataset.show.cli.run`) in this process, which is
where argparse exits; two run the real `spg-shard` in a subprocess to show the exit code and the one line.
Every value here was accepted, or failed with a traceback or without the option's name, before these checks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import List

import pytest

from spgdataset import write_shards
from spgdataset.show import cli as inspect_cli
from spgdataset.write import cli as shard_cli
from tests.helpers import run_cli, wav

CORES = os.cpu_count() or 1
BEYOND = str(CORES + 1)
LINEAR = ["--spectrogram", "linear"]

SHARD_CASES = [  # (option, value, further arguments)
    *[(option, value, []) for option in ("--sample-rate", "--n-fft", "--hop-length", "--n-mels")
      for value in ("-1", "0")],
    *[("--f-min", value, []) for value in ("inf", "nan", "-1", "1e30")],
    *[("--f-max", value, []) for value in ("inf", "nan", "-1", "0", "1e30")],
    *[("--thresh", value, LINEAR) for value in ("inf", "nan")],
    *[("--max-shard-mb", value, []) for value in ("inf", "nan", "-1", "0", "1e30")],
    *[("--max-shard-files", value, []) for value in ("-1", "0")],
    *[("--segment-sec", value, []) for value in ("inf", "nan", "-1", "0", "1e30")],
    *[("--segment-overlap-sec", value, []) for value in ("inf", "nan", "-1", "1e30")],
    *[("--workers", value, []) for value in ("-1", "0", BEYOND)],
    ("--part", f"0/{2**63}", []),
    ("--scheduler", f"local:{BEYOND}", []),
]
INSPECT_CASES = [
    *[(option, value) for option in ("--window-size", "--window-offset")
      for value in ("inf", "nan", "-1", "0", "1e30")],
    *[("--content-ratio", value) for value in ("inf", "nan", "-1", "1e30")],
    *[("--split", value) for value in ("inf", "nan", "-1", "0")],
    ("--seed", "-1"),
]


@pytest.fixture
def audio(tmp_path) -> Path:
    wav(tmp_path / "audio" / "a.wav", seconds=2.5)
    return tmp_path / "audio"


def usage_error(run, argv: List[str], capsys) -> str:
    """The one line a usage error prints last, after checking the exit code 2 and that there is no traceback."""
    with pytest.raises(SystemExit) as exited:
        run(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("option, value, more", SHARD_CASES)
def test_every_bad_number_of_spg_shard_is_a_usage_error_naming_it(audio, tmp_path, capsys, option, value, more):
    workers = [] if option in ("--workers", "--scheduler") else ["--workers", "1"]
    line = usage_error(shard_cli.run, [str(audio), str(tmp_path / "out"), option, value, *more, *workers, "--quiet"],
                       capsys)
    assert line.startswith("spg-shard: error:") and option in line, line
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("option, value", INSPECT_CASES)
def test_every_bad_number_of_spg_inspect_is_a_usage_error_naming_it(run16k, capsys, option, value):
    line = usage_error(inspect_cli.run, [run16k[0], option, value], capsys)
    assert line.startswith("spg-inspect: error:") and option in line, line


@pytest.mark.parametrize("option, value", [("--random", "0"), ("--random", "-1")])
def test_a_random_count_below_one_is_a_usage_error(run16k, tmp_path, capsys, option, value):
    line = usage_error(inspect_cli.run, [run16k[0], "--plot", str(tmp_path / "x.png"), option, value], capsys)
    assert option in line and "integer >= 1" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("option, value", [("--segment-sec", "inf"), ("--max-shard-mb", "nan")])
def test_the_real_command_exits_2_with_one_line(audio, tmp_path, option, value):
    done = run_cli([audio, tmp_path / "out", option, value, "--workers", "1", "--quiet"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0] == done.stderr.strip().splitlines()[-1], done.stderr
    assert errors[0].startswith("spg-shard: error:") and option in errors[0], errors


@pytest.mark.parametrize("segments", [(math.inf, 30.0), (math.nan, 30.0), (300.0, math.inf), (300.0, math.nan),
                                      (1e30, 30.0), ("300", 30.0)])
def test_write_shards_names_bad_segments(audio, tmp_path, segments):
    with pytest.raises(ValueError, match=r"^segments: the (segment length|overlap) must be a finite number"):
        write_shards(audio, None, tmp_path / "out", workers=1, progress=False, segments=segments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, value", [
    ("max_shard_bytes", math.nan), ("max_shard_bytes", -1), ("max_shard_bytes", 0), ("max_shard_bytes", 1.5e6),
    ("max_shard_bytes", True), ("max_shard_files", 0), ("max_shard_files", 2.0), ("max_shard_files", 2**63),
    ("part", (True, 2)), ("part", (0.0, 2)), ("part", (0, 2, 4)), ("part", "0/2"),
])
def test_write_shards_checks_its_limits_and_part(audio, tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        write_shards(audio, None, tmp_path / "out", workers=1, progress=False, **{name: value})
    assert not (tmp_path / "out").exists()
