"""Usage errors from the installed `station` command: one line, exit 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

STATION = Path(sys.executable).with_name("station")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check-recipe"], "No such command 'check-recipe'"),
        (["evaluate", "--dataset", ".", "--no-such-flag"], "No such option: --no-such-flag"),
        (["evaluate"], "Missing option '--dataset'"),
    ],
)
def test_usage_errors_are_short(argv: list[str], says: str) -> None:
    exe = str(STATION) if STATION.exists() else shutil.which("station")
    assert exe, "the station entry point is not installed"
    run = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert says in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
