"""The package type-checks: mypy over spgdataset with the settings in pyproject.toml ([tool.mypy]), so that the
README's test command (and so CI) runs the type check too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # a mypy process: 10-20 s on 2 cores without its cache (a fresh clone, as CI has), 2 s with it
@pytest.mark.skipif(sys.version_info < (3, 10), reason="the pinned mypy (the dev extra) needs Python 3.10")
def test_the_package_type_checks():
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        pytest.fail(f"mypy found problems:\n{run.stdout}{run.stderr}", pytrace=False)
