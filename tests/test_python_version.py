"""``requires-python = ">=3.10"`` is true: no syntax, builtin or standard-library name newer than 3.10.

Ruff parses every file as Python 3.10 (``--target-version py310``): newer syntax (``except*``, ``type X = …``,
f-strings nesting the same quotes) is a syntax error (E9 and ruff's version-aware parser), newer builtins
(``ExceptionGroup``) are undefined names (F821), UP and FA keep annotations valid on 3.10, and TID251 bans the
standard-library names added later (``typing.Self``, ``tomllib`` …, listed in ``pyproject.toml`` under
``[tool.ruff.lint.flake8-tidy-imports.banned-api]``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LABS = sorted(str(p.relative_to(REPO)) for p in (REPO / "assignments").glob("*.py"))
PATHS = ["minimoe", *LABS, "benchmarks", "tests"]


def test_pyproject_floor_and_ruff_target_agree() -> None:
    text = (REPO / "pyproject.toml").read_text()  # no tomllib: it is itself 3.11+
    assert re.search(r'^requires-python = ">=3\.10"$', text, re.MULTILINE)
    assert re.search(r'^target-version = "py310"$', text, re.MULTILINE)
    banned = re.search(r"^\[tool\.ruff\.lint\.flake8-tidy-imports\.banned-api\]$(.*?)(^\[|\Z)", text,
                       re.MULTILINE | re.DOTALL)
    assert banned and '"typing.Self"' in banned.group(1) and '"tomllib"' in banned.group(1)


def test_every_python_file_runs_on_python_3_10() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
         "--target-version", "py310", "--select", "F,E9,UP,FA,TID251", *PATHS],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "No module named ruff" not in result.stderr, "ruff is a dev dependency: pip install -e '.[dev]'"
    assert result.returncode == 0, (
        f"Python 3.10 violations (requires-python is >=3.10):\n{result.stdout}{result.stderr}")
