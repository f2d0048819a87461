"""Every chapter is committed without outputs and has the structure of a chapter.

Execution is tested where the book executes the chapters, once: `tests/test_book.py` (marked slow) checks every
chapter as the build ran it (no cell error, a figure, its time budget).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_chapters_exist():
    assert len(NOTEBOOKS) >= 3, "notebooks/ should hold chapters 00-02 at least"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_is_stripped_and_structured(path: Path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks without outputs (nbconvert --clear-output)"
            assert cell.get("execution_count") is None, f"{path.name}: execution counts must be stripped"
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert nb["cells"][0]["cell_type"] == "markdown" and nb["cells"][0]["source"], f"{path.name}: starts with a title"
    lowered = text.lower()
    missing = [name for name, words in {"learning objectives": ["objective"], "an explorer": ["explorer", "ipywidgets"],
                                         "a summary": ["summary"], "references": ["{cite}"],
                                         "minimoe": ["import minimoe", "from minimoe"]}.items()
               if not any(w in lowered for w in words)]
    assert not missing, f"{path.name} lacks {', '.join(missing)}"
