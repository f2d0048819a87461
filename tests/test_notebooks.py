"""Every chapter executes top to bottom without error, within its budget, and is committed without outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# DESIGN.md: each chapter executes in at most 3 minutes on a 2-core laptop. Tests run two workers on two cores, so
# the limit enforced here leaves room for a busy machine; `make book` prints the real per-chapter timings.
CHAPTER_TIMEOUT_S = 360


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


@pytest.mark.slow
@pytest.mark.timeout(CHAPTER_TIMEOUT_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_executes(path: Path):
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CHAPTER_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    assert elapsed < CHAPTER_TIMEOUT_S, f"{path.name} took {elapsed:.0f} s"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
               or "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert figures, f"{path.name} shows no figure"
