"""The code itself, checked in the test command: types (mypy), lint and format (ruff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        ["mypy"],
        ["ruff", "check", "offloadd", "tests", "bench"],
        ["ruff", "format", "--check", "offloadd", "tests", "bench"],
    ],
    ids=["mypy", "ruff-check", "ruff-format"],
)
def test_clean(command):
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=55
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_over_400_lines():
    long = {
        p.name: n
        for p in (ROOT / "offloadd").glob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long
