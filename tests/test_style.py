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


def _functions():
    import ast

    for path in sorted((REPO / "persona").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(REPO), node


def test_no_function_is_longer_than_80_lines():
    long = [f"{path}:{node.lineno} {node.name}" for path, node in _functions() if node.end_lineno - node.lineno >= 80]
    assert not long, long


def test_no_module_but_the_layouts_compares_a_layout_name():
    """The reference-or-template decision is the :class:`~persona.data.input_layouts.Layout`'s: no comparison with a
    layout's name (the constants or their strings) anywhere else."""
    import ast

    names = {"REFERENCE_LAYOUT", "CHAT_TEMPLATE_LAYOUT", "INPUT_LAYOUTS"}
    found = []
    for path in sorted((REPO / "persona").rglob("*.py")):
        if path.name == "input_layouts.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            for part in ast.walk(node):
                named = isinstance(part, ast.Name) and part.id in names
                spelled = isinstance(part, ast.Constant) and part.value in ("reference", "chat_template")
                if named or spelled or (isinstance(part, ast.Attribute) and part.attr in ("layout", "input_layout")):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found
