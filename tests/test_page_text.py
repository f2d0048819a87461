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


def cells(path: Path, kind: str) -> list[str]:
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) for c in nb["cells"]
            if c["cell_type"] == kind and "remove-cell" not in c.get("metadata", {}).get("tags", [])]


def long_code_lines(path: Path) -> list[str]:
    return [line for source in cells(path, "code") for line in source.splitlines() if len(line) > CODE_LINE_LIMIT]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
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


# Figures: the book shows a figure at most as wide as a cell's output, so a wide figure is scaled down and its text
# with it. At a 1280 px window the output column of a chapter page is 678-688 px wide (measured in Chromium with
# sphinx-book-theme 1.3 / pydata-sphinx-theme 0.17: `.cell_output` clientWidth, and images' clientWidth against their
# naturalWidth). A label of s points on a figure w inches wide (saved at d dpi) is s·d/72 px, times 678/(w·d) when
# the figure is wider than the column: s·min(d/72, 678/(72·w)) px. Matplotlib's smallest default text is 10 pt.
COLUMN_PX = 678
INLINE_DPI = 100  # matplotlib's figure.dpi, which the inline backend saves at
MIN_LABEL_PX = 9
DEFAULT_FONT_PT = 10.0
NAMED_SIZES = {"xx-small": 0.579, "x-small": 0.694, "small": 0.833, "medium": 1.0, "large": 1.2}


def label_px(size_pt: float, width_in: float) -> float:
    return size_pt * min(INLINE_DPI / 72, COLUMN_PX / (72 * width_in))


def figure_text(source: str) -> tuple[list[float], list[float]]:
    """Figure widths (inches) and font sizes (points) written as literals in `source`."""
    import ast

    widths, sizes = [], [DEFAULT_FONT_PT]
    for node in ast.walk(ast.parse("\n".join(l for l in source.splitlines() if not l.startswith(("%", "!"))))):
        if not isinstance(node, ast.keyword):
            continue
        value = node.value
        if node.arg == "figsize" and isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Constant):
            widths.append(float(value.elts[0].value))
        elif node.arg in ("fontsize", "labelsize", "size", "title_fontsize") and isinstance(value, ast.Constant):
            size = value.value
            sizes.append(DEFAULT_FONT_PT * NAMED_SIZES[size] if isinstance(size, str) and size in NAMED_SIZES
                         else float(size) if isinstance(size, (int, float)) else DEFAULT_FONT_PT)
    return widths, sizes


def small_labels(sources: list[str], default_width: float = 6.4) -> list[str]:
    found = []
    for source in sources:
        widths, sizes = figure_text(source)
        for width in widths or ([default_width] if min(sizes) < DEFAULT_FONT_PT else []):
            if label_px(min(sizes), width) < MIN_LABEL_PX:
                found.append(f"{min(sizes):g} pt on a {width:g} in wide figure: "
                             f"{label_px(min(sizes), width):.1f} px ({source.strip().splitlines()[0][:60]}…)")
    return found


def test_label_size_arithmetic():
    assert label_px(10, 6.4) == pytest.approx(10 * 100 / 72)  # narrower than the column: shown at its own size
    assert label_px(8, 14) < 6 and label_px(10, 9) >= MIN_LABEL_PX
    assert small_labels(["fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))"])
    assert not small_labels(["fig, axes = plt.subplots(3, 1, figsize=(9, 9))\nax.legend(fontsize=9)"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_figure_labels_are_readable_at_1280px(path: Path):
    """Every cell's figure, at the width the book shows it, has labels of at least 9 px."""
    found = small_labels(cells(path, "code"))
    assert not found, f"{path.name}: labels under {MIN_LABEL_PX} px at a 1280 px window:\n" + "\n".join(found)


def test_viz_labels_are_readable_at_1280px():
    """minimoe.viz draws into the chapters' axes: its own font sizes must hold on the widest chapter figure (9 in)."""
    import ast

    tree = ast.parse((ROOT / "minimoe" / "viz.py").read_text())
    functions = [ast.get_source_segment((ROOT / "minimoe" / "viz.py").read_text(), f) for f in tree.body
                 if isinstance(f, ast.FunctionDef)]
    found = [f"{min(figure_text(source)[1]):g} pt: {label_px(min(figure_text(source)[1]), 9.0):.1f} px in "
             f"{source.splitlines()[0][:60]}…" for source in functions
             if label_px(min(figure_text(source)[1]), 9.0) < MIN_LABEL_PX]
    assert not found, "minimoe/viz.py:\n" + "\n".join(found)
