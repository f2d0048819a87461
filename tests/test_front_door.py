"""The front door matches the course: every chapter, lab and benchmark that exists is listed where a newcomer looks.

What exists is read from the tree: chapters are `notebooks/NN_*.ipynb` (their title is the first heading, after
"Chapter N — "), labs are the folders under `assignments/source/`, benchmarks are `benchmarks/*.py`. The pages:

- `README.md`: a chapter-table row `| N | <title> |`, each lab's folder name, each benchmark's row
  `| `benchmarks/<name>.py` |`, and no count of labs in words that disagrees with the tree;
- `book/intro.md` (the landing page): a link to `chapters/<stem>` whose text is the chapter's title; each lab;
- `book/syllabus.md`: a link to `chapters/<stem>` for every chapter; each lab;
- `book/instructor.md`: a section `## Chapter N — <title>`; each lab.

A new chapter, lab or benchmark fails this test until its rows are added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LABS = sorted(p.name for p in (ROOT / "assignments" / "source").iterdir() if p.is_dir())
BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))
PAGES = {name: ROOT / name for name in ("README.md", "book/intro.md", "book/syllabus.md", "book/instructor.md")}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen"]


def chapter_title(path: Path) -> tuple[int, str]:
    """(N, title) from the chapter's first heading, "# Chapter N — title"."""
    heading = json.loads(path.read_text())["cells"][0]["source"][0].strip()
    match = re.fullmatch(r"# Chapter (\d+) — (.+)", heading)
    assert match, f"{path.name}: the first line should read '# Chapter N — title', not {heading!r}"
    assert int(match.group(1)) == int(path.name[:2]), f"{path.name}: its heading says chapter {match.group(1)}"
    return int(match.group(1)), match.group(2)


def text(page: str) -> str:
    return PAGES[page].read_text()


def test_the_tree_has_what_the_course_promises():
    assert len(CHAPTERS) >= 11 and len(LABS) >= 4 and len(BENCHMARKS) >= 5, (CHAPTERS, LABS, BENCHMARKS)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_is_on_every_page(path: Path):
    number, title = chapter_title(path)
    link = rf"<chapters/{re.escape(path.stem)}>`"
    missing = []
    if not re.search(rf"^\| {number} \| {re.escape(title)} \|", text("README.md"), re.MULTILINE):
        missing.append(f"README.md: a chapter-table row '| {number} | {title} | … |'")
    if not re.search(rf"\{{doc\}}`{re.escape(title)} {link}", text("book/intro.md")):
        missing.append(f"book/intro.md: {{doc}}`{title} <chapters/{path.stem}>`")
    if not re.search(link, text("book/syllabus.md")):
        missing.append(f"book/syllabus.md: a week linking <chapters/{path.stem}>")
    if not re.search(rf"^## Chapter {number} — {re.escape(title)}$", text("book/instructor.md"), re.MULTILINE):
        missing.append(f"book/instructor.md: a section '## Chapter {number} — {title}'")
    assert not missing, f"chapter {number} ({path.name}) is missing from:\n" + "\n".join(missing)


@pytest.mark.parametrize("lab", LABS)
def test_every_lab_is_on_every_page(lab: str):
    missing = [page for page in PAGES if f"`{lab}`" not in text(page)]
    assert not missing, f"lab {lab} (assignments/source/{lab}) is not named as `{lab}` in {missing}"


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_is_in_the_readme(script: str):
    assert re.search(rf"^\| `benchmarks/{re.escape(script)}` \|", text("README.md"), re.MULTILINE), (
        f"README.md's benchmark table has no row for benchmarks/{script}")


@pytest.mark.parametrize("page", PAGES)
def test_lab_counts_in_words_agree_with_the_tree(page: str):
    """ "three labs" where there are four; chapter counts ("week 4 holds two chapters") are not totals."""
    counts = {"labs": len(LABS), "graded labs": len(LABS), "assignments": len(LABS)}
    wrong = [f"'{m.group(0)}' (there are {counts[m.group(2)]})"
             for m in re.finditer(r"\b(\w+) (graded labs|labs|assignments)\b", text(page))
             if m.group(1).lower() in NUMBER_WORDS and NUMBER_WORDS.index(m.group(1).lower()) != counts[m.group(2)]]
    assert not wrong, f"{page} counts what the tree has a different number of: {wrong}"


def test_the_site_has_a_favicon():
    """Without one every page's console shows a 404 for /favicon.ico."""
    match = re.search(r"^\s+html_favicon: (\S+)$", (ROOT / "book" / "_config.yml").read_text(), re.MULTILINE)
    assert match, "book/_config.yml sets no html_favicon"
    assert (ROOT / "book" / match.group(1)).is_file(), f"html_favicon names {match.group(1)}, which is not in book/"
