"""The code keeps the field's style: ruff's format and lint rules (pyproject.toml), lines of at most 119 characters."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

FOLDERS = ["persona", "tests", "benchmarks", "scripts"]


def _ruff() -> list[str]:
    if shutil.which("ruff", path=str(REPO / ".venv" / "bin")) is None and shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (the dev extra installs it)")
    return [sys.executable, "-m", "ruff"]


def test_the_code_is_formatted_and_lint_free():
    ruff = _ruff()
    formatted = subprocess.run([*ruff, "format", "--check", *FOLDERS], cwd=REPO, capture_output=True, text=True)
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr
    linted = subprocess.run([*ruff, "check", *FOLDERS], cwd=REPO, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
