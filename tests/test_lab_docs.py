"""One set of instructions for the labs: the book's assignments, students and instructor pages and the instructor
guide (assignments/README.md) agree with each other and with what the judge really does."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import judge
from judge.remote import KINDS

README = ROOT / "assignments" / "README.md"
PAGES = [ROOT / "book" / "assignments.md", ROOT / "book" / "students.md", ROOT / "book" / "instructor.md", README]
LABS = sorted(p.name for p in (ROOT / "assignments" / "source").iterdir() if p.is_dir())
THREAT_MODEL = "What the grader guarantees, and what remains"


def source(lab: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "assignments" / "source" / lab / f"{lab}.ipynb", as_version=4)


def cell_points(lab: str) -> tuple[float, float]:
    """(points of the test cells, points of the cells graded by hand) in the source notebook."""
    auto = manual = 0.0
    for cell in source(lab).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            if meta.get("solution"):
                manual += meta["points"]
            else:
                auto += meta["points"]
    return auto, manual


def readme_table() -> dict[str, tuple[float, float]]:
    """lab -> (autograded, by hand) from the README's table."""
    rows = re.findall(r"^\| `(\w+)` — .*\| ([\d.]+) \| ([\d.]+) \|$", README.read_text(), re.MULTILINE)
    return {lab: (float(auto), float(hand)) for lab, auto, hand in rows}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_tells_lecturers_to_run_plain_nbgrader_autograde(page):
    for line in page.read_text().splitlines():
        if "nbgrader autograde" in line:
            assert "never" in line, f"{page.name}: {line.strip()}"
    assert "no sandbox" not in page.read_text(), page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_lab_appears_on_every_page(page):
    text = page.read_text()
    assert [lab for lab in LABS if lab not in text] == [], page.name


def test_readme_points_equal_the_notebooks_and_the_judges_items():
    table = readme_table()
    assert sorted(table) == LABS
    for lab in LABS:
        assert table[lab] == pytest.approx(cell_points(lab)), lab
    for lab in judge.PORTED:
        assert table[lab][0] == pytest.approx(sum(item.points for item in judge.lab(lab).ITEMS)), lab


@pytest.mark.parametrize("lab", judge.PORTED)
def test_each_notebooks_parts_table_matches_its_cells(lab):
    """The intro table's points, part by part, are the points of the graded cells in order: each row the sum of the
    next cells (a part may have two test cells, e.g. a4's quantize and dequantize)."""
    nb = source(lab)
    intro = nb.cells[0].source
    table = [float(p) for p in re.findall(r"^\| \d+ \| .* \| ([\d.]+) \|$", intro, re.MULTILINE)]
    cells = [c.metadata["nbgrader"]["points"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    parts, total = [], 0.0
    for points in cells:
        total += points
        if len(parts) < len(table) and abs(total - table[len(parts)]) < 1e-9:
            parts.append(total)
            total = 0.0
    assert parts == pytest.approx(table) and total == 0 and sum(cells) == pytest.approx(sum(table)), (table, cells)


def test_the_threat_model_is_stated_once():
    assert README.read_text().count(f"## {THREAT_MODEL}") == 1
    for page in PAGES[:-1]:
        assert THREAT_MODEL.lower() not in page.read_text().lower().replace("\n", " ") or page.name == "assignments.md"
    assert THREAT_MODEL in (ROOT / "book" / "assignments.md").read_text()


def test_students_page_says_what_may_be_read_and_forbids_copying():
    text = (ROOT / "book" / "students.md").read_text()
    assert "**Read**" in text and "including the reference implementation" in text
    assert "**Do not copy the reference.**" in text


def _feedback_lines(text: str) -> list[str]:
    """Feedback lines quoted in `text` (inline, possibly wrapped, or one per line of a code block)."""
    flat = re.sub(r"\s*\n\s*", " ", text)
    return [m.strip() for m in re.findall(r"\[[\d.]+/[\d.]+\] [^`\[]*?: (?:passed|FAILED: [^`\[]+?)(?=\s*(?:`|\[|grader:|$))",
                                          flat)]


@pytest.mark.parametrize("lab", judge.PORTED)
def test_student_facing_text_quotes_the_judges_real_feedback(lab):
    """No stale claims (a '[hidden]' line, a grader that 'detects calls'); each quoted feedback line is one the
    judge can write: an item of the lab with its points, and a failure kind of the judge's own."""
    text = "\n".join(c.source for c in source(lab).cells if c.cell_type == "markdown")
    assert "[hidden]" not in text and "detects" not in text and "watches" not in text
    quoted = _feedback_lines(text)
    assert quoted, "the rules quote no feedback line"
    items = {item.name: item.points for item in judge.lab(lab).ITEMS}
    kinds = set(KINDS.values())
    for line in quoted:
        m = re.fullmatch(r"\[([\d.]+)/([\d.]+)\] (.+?): (?:passed|FAILED: (\w+): (.+))", line)
        assert m, line
        assert m[3] in items and float(m[2]) == items[m[3]], line
        assert float(m[1]) == (items[m[3]] if m[4] is None else 0), line
        assert m[5] is None or m[5].strip() in kinds or m[5].startswith("wrong"), line


def test_students_page_feedback_examples_are_real():
    text = (ROOT / "book" / "students.md").read_text()
    assert "[hidden]" not in text and "tripwire" not in text
    items = {item.name: item.points for lab in judge.PORTED for item in judge.lab(lab).ITEMS}
    for line in _feedback_lines(text):
        m = re.fullmatch(r"\[([\d.]+)/([\d.]+)\] (.+?): (?:passed|FAILED: \w+: (.+))", line)
        assert m and m[3] in items and float(m[2]) == items[m[3]], line
        assert m[4] is None or m[4].strip() in set(KINDS.values()), line
    for kind in set(KINDS.values()):  # every way a call can fail is explained
        assert kind.split(" (")[0] in text, kind
