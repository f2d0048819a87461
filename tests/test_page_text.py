"""What a reader meets on a rendered page: code that fits the book's column, no raw TeX in prose.

- Code lines of the chapters are at most 88 characters: longer lines scroll sideways in the book's code blocks.
  Cells tagged `remove-cell` (the hidden install cell) are not shown, so they are not checked.
- Superscripts and subscripts written in TeX (`^{…}`, `_{…}`) appear only inside math (`$…$`, `$$…$$`, a math
  block or role) or code: outside it, MyST prints them as they are typed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))
CODE_LINE_LIMIT = 88
# Chapter 8 is being rewritten on another branch, whose author wraps its lines; strict, so the mark must go when
# the chapter passes.
BEING_REWRITTEN = {"08_distillation"}


def cells(path: Path, kind: str) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == kind and "remove-cell" not in c.get("metadata", {}).get("tags", [])]


def long_code_lines(path: Path) -> list[str]:
    return [line for source in cells(path, "code") for line in source.splitlines() if len(line) > CODE_LINE_LIMIT]


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(
    strict=True, reason="being rewritten on another branch")) if p.stem in BEING_REWRITTEN else p
    for p in NOTEBOOKS], ids=lambda p: p.stem)
def test_code_lines_fit_the_page(path: Path):
    long = long_code_lines(path)
    assert not long, (f"{path.name}: {len(long)} code lines over {CODE_LINE_LIMIT} characters, e.g.\n"
                      + "\n".join(long[:5]))


# Removed before looking for TeX: fenced code, inline code (and so math roles), math blocks, inline math (not \$).
NOT_PROSE = [re.compile(p, re.DOTALL | re.MULTILINE) for p in (
    r"^(```|~~~).*?^\1", r"`[^`\n]*`", r"\$\$.*?\$\$", r"(?<![\\$])\$(?!\$)(?:\\.|[^$\\])+?(?<!\\)\$")]
RAW_TEX = re.compile(r"[\^_]\{")


def raw_tex(markdown: str) -> list[str]:
    """Snippets of `markdown` where `^{` or `_{` stands outside math and code."""
    for pattern in NOT_PROSE:
        markdown = pattern.sub(" ", markdown)
    return [markdown[max(0, m.start() - 30):m.end() + 20].replace("\n", " ") for m in RAW_TEX.finditer(markdown)]


def test_raw_tex_is_found():
    assert raw_tex("the error 2^{-9} is") and raw_tex("RMSNorm(h^{k-1})")
    assert not raw_tex("the error $2^{-9}$ costs \\$2, $x_{i}$, `a_{b}`, {math}`h^{k}`\n$$\nh^{k}\n$$\n")
    assert not raw_tex("```python\nx = d_{1}\n```\n")


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_no_raw_tex_in_prose(path: Path):
    markdown = "\n\n".join(cells(path, "markdown")) if path.suffix == ".ipynb" else path.read_text()
    found = raw_tex(markdown)
    assert not found, f"{path.relative_to(ROOT)}: TeX outside math renders as typed: {found}"
