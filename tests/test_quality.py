"""The code itself, checked in the test command: types (mypy), lint and format (ruff), the
import rule of ARCHITECTURE.md (lint-imports, with the contracts in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "mypy"],
        ["-m", "ruff", "check", "offloadd", "tests", "bench"],
        ["-m", "ruff", "format", "--check", "offloadd", "tests", "bench"],
        ["-c", LINT_IMPORTS, "--no-cache"],
    ],
    ids=["mypy", "ruff-check", "ruff-format", "lint-imports"],
)
def test_clean(command):
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=55
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_over_400_lines():
    tops = ("offloadd", "tests", "bench")
    modules = sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))
    # the rule must see the layers' folders, not only the few modules left at the top
    assert {p.parent.name for p in modules} >= {"http", "requests", "storage", "openai"}
    assert {p.parent.name for p in modules} >= {"tests", "bench", "scenarios"}
    in_subfolders = [p for p in modules if p.parent.parent != ROOT]
    assert len(in_subfolders) >= 20, in_subfolders  # recursing, not only the top of each
    long = {
        str(p.relative_to(ROOT)): n for p in modules if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long
