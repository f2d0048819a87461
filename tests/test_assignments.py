"""The nbgrader pipeline end to end, with real nbgrader commands on a temporary copy of the course.

One batch of a1 submissions (reference, release, partial and a dozen cheats) is graded once by ``grade.py``; the
tests below read its results. a2 and a3 (whose last part trains a policy with the student's loss) are checked for
full marks and zero. Slow: a few minutes in all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("assignments")]

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "assignments"
sys.path.insert(0, str(COURSE))
import grade

CELL_TIMEOUT = 20  # seconds; the course uses 60, a test needs the infinite loop to end sooner
ENV = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           OMP_NUM_THREADS="1")


def nbgrader(course: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=ENV, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def reference_solutions(course: Path, assignment: str) -> dict[str, str]:
    """grade_id -> the instructor's solution, markers removed (what a perfect student writes)."""
    nb = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", c.source)
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}


def submit(course: Path, assignment: str, student: str, solutions: dict[str, str] | None = None, edit=None) -> None:
    """Hand in the released notebook with some solution cells replaced, optionally edited further."""
    nb = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if solutions and gid in solutions:
            cell.source = solutions[gid]
    if edit is not None:
        edit(nb)
    folder = course / "submitted" / student / assignment
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{assignment}.ipynb")


def is_test(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return meta.get("grade") and not meta.get("solution")


def prepend(gid: str, code: str):
    def edit(nb):
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == gid)
        cell.source = code + "\n" + cell.source
    return edit


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


SNOOP = """
import pathlib, sqlite3
needles = [b"_gua" + b"rded(", b"Hidden test: rope_rotate " + b"differs"]  # split: not found in this cell
found, seen = [], 0
here = pathlib.Path.cwd()
for top in [here, *list(here.parents)[:4]]:  # up to the grader's staging folder
    for p in top.rglob("*"):
        if p.is_file() and p.suffix in (".ipynb", ".db", ".json", ".py"):
            seen += 1
            text = p.read_bytes()
            if any(n in text for n in needles):
                found.append(str(p))
print(f"LEAKED from {found}" if found else f"nothing found in {seen} files")
"""


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    course = tmp_path_factory.mktemp("course")
    for name in ("nbgrader_config.py", "nbgrader_ext.py"):
        shutil.copy(COURSE / name, course / name)
    shutil.copytree(COURSE / "source", course / "source")
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.Execute.timeout = {CELL_TIMEOUT}\nc.BoundedExecute.timeout = {CELL_TIMEOUT}\n")
    return course


def release(course: Path, assignment: str) -> None:
    nbgrader(course, "generate_assignment", assignment, "--force")


@pytest.fixture(scope="module")
def a1(course):
    """Grade one class of a1 submissions; returns (results by student, course)."""
    release(course, "a1_mla")
    ref = reference_solutions(course, "a1_mla")
    from minimoe.config import ModelConfig
    tiny = ModelConfig.from_preset("tiny-dense")
    naive = tiny.num_attention_heads * (tiny.qk_nope_head_dim + tiny.qk_rope_head_dim + tiny.v_head_dim)
    absorbed = tiny.kv_lora_rank + tiny.qk_rope_head_dim
    submit(course, "a1_mla", "solved", ref)
    submit(course, "a1_mla", "release")
    submit(course, "a1_mla", "partial", {"rope_rotate": ref["rope_rotate"]})
    submit(course, "a1_mla", "edited_tests",
           edit=lambda nb: [setattr(c, "source", "print('all tests passed')") for c in nb.cells if is_test(c)])
    submit(course, "a1_mla", "deleted_tests", edit=lambda nb: setattr(nb, "cells", [c for c in nb.cells
                                                                                    if not is_test(c)]))
    submit(course, "a1_mla", "monkeypatch", {
        "rope_rotate": "import torch\nimport minimoe.attention.rope as R\n"
                       "torch.allclose = lambda *a, **k: True\n"
                       "def rope_rotate(x, position_ids, base=10000.0):\n    return x.clone()\n"
                       "R.RotaryEmbedding.forward = lambda self, x, p: x.clone()\n",
        "mla_naive": "def mla_naive(mla, cfg, x):\n    return torch.zeros_like(x)\n"})
    submit(course, "a1_mla", "calls_reference", {
        "rope_rotate": "from minimoe.attention.rope import RotaryEmbedding\n"
                       "def rope_rotate(x, position_ids, base=10000.0):\n"
                       "    return RotaryEmbedding(x.shape[-1], 4096, base)(x, position_ids)\n",
        "mla_naive": "def mla_naive(mla, cfg, x):\n    return mla(x)\n"})
    submit(course, "a1_mla", "hardcoded", {
        "cache_elements_per_token": f"def cache_elements_per_token(cfg, mode):\n"
                                    f"    return {{'naive': {naive}, 'absorbed': {absorbed}}}[mode]\n"})
    submit(course, "a1_mla", "infinite_loop", ref,  # sleeps rather than spins: the same timeout, no CPU burnt
           edit=prepend("mla_naive", "import time\nwhile True:\n    time.sleep(0.5)\n"))
    submit(course, "a1_mla", "exit_and_flood", edit=prepend(
        "rope_rotate", "for i in range(300000):\n    print(i, 'x' * 50)\nimport sys\nsys.exit(0)\n"))
    submit(course, "a1_mla", "os_exit", ref, edit=prepend("mla_naive", "import os\nos._exit(0)\n"))
    submit(course, "a1_mla", "kills_grader", edit=prepend(
        "rope_rotate", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"))
    submit(course, "a1_mla", "snoop", edit=prepend("rope_rotate", SNOOP))
    before = digest(course / "submitted")
    results = {r.student: r for r in grade.grade_class(course, "a1_mla", jobs=2, timeout=240,
                                                       progress=lambda line: None)}
    assert digest(course / "submitted") == before, "grading changed submitted/"
    return results, course


def autograded_text(course: Path, student: str, assignment: str = "a1_mla") -> str:
    nb = nbformat.read(course / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    return "\n".join(" ".join([str(o.get("text", "")), str(o.get("ename", "")), str(o.get("evalue", ""))])
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


AUTO_POINTS = 12.0  # a1's autograded points; the written answer (2 more) is graded by hand


def test_reference_solution_scores_full_marks(a1):
    results, _ = a1
    assert results["solved"].status == "ok" and results["solved"].score == AUTO_POINTS


def test_release_scores_zero(a1):
    results, _ = a1
    assert results["release"].status == "ok" and results["release"].score == 0


def test_partial_solution_scores_in_between(a1):
    results, _ = a1
    assert results["partial"].score == 2.0


@pytest.mark.parametrize("student", ["edited_tests", "deleted_tests", "monkeypatch", "calls_reference", "hardcoded",
                                     "exit_and_flood", "snoop"])
def test_cheats_earn_nothing(a1, student):
    results, _ = a1
    assert results[student].status == "ok", results[student].reason
    assert results[student].score == 0, f"{student} earned {results[student].score}"


def test_deleted_test_cells_are_restored_not_left_for_manual_grading(a1):
    _, course = a1
    nb = nbformat.read(course / "autograded" / "deleted_tests" / "a1_mla" / "a1_mla.ipynb", as_version=4)
    assert sum(1 for c in nb.cells if "### BEGIN HIDDEN TESTS" in c.source) == 4


def test_infinite_loop_hits_the_cell_timeout_and_grading_goes_on(a1):
    results, course = a1
    assert results["infinite_loop"].status == "ok"
    text = autograded_text(course, "infinite_loop")
    assert "CellTimeoutError" in text or "KeyboardInterrupt" in text, text
    assert results["infinite_loop"].score == AUTO_POINTS - 4  # the looping cell never defined mla_naive
    assert results["solved"].score == AUTO_POINTS  # graded beside it


def test_flood_is_truncated(a1):
    _, course = a1
    size = (course / "autograded" / "exit_and_flood" / "a1_mla" / "a1_mla.ipynb").stat().st_size
    assert size < 200_000 and "truncated" in autograded_text(course, "exit_and_flood")


@pytest.mark.parametrize("student", ["os_exit", "kills_grader"])
def test_dead_kernel_or_grader_is_reported_not_a_silent_zero(a1, student):
    results, _ = a1
    assert results[student].status == "failed" and results[student].reason
    assert results["solved"].status == "ok"  # the batch went on
    assert "kills the kernel" in results[student].flags


def test_hidden_tests_are_not_readable_by_student_code(a1):
    _, course = a1
    text = autograded_text(course, "snoop")
    assert "nothing found in" in text and "LEAKED" not in text
    with sqlite3.connect(course / "gradebook.db") as db:  # the course's own gradebook is left intact
        assert db.execute("SELECT count(*) FROM source_cell WHERE source LIKE '%BEGIN HIDDEN TESTS%'").fetchone()[0]


def test_grades_reach_the_gradebook_and_the_export(a1):
    _, course = a1
    nbgrader(course, "export")
    rows = (course / "grades.csv").read_text().splitlines()
    by_student = {r.split(",")[3]: r for r in rows[1:] if r.startswith("a1_mla,")}
    assert float(by_student["solved"].split(",")[9]) == AUTO_POINTS
    assert float(by_student["partial"].split(",")[9]) == 2.0


def test_feedback_names_failures_without_revealing_hidden_tests(a1):
    results, course = a1
    nbgrader(course, "generate_feedback", "a1_mla")  # one call: every graded student of the batch
    pages = {s: (course / "feedback" / s / "a1_mla" / "a1_mla.html").read_text()
             for s, r in results.items() if r.status == "ok"}
    assert len(pages) == sum(r.status == "ok" for r in results.values()) >= 10
    for student, html in pages.items():
        for secret in ("BEGIN HIDDEN TESTS", "_guarded", "_gen", "randint", "from_preset(_preset)"):
            assert secret not in html, (student, secret)
    patched, release = pages["monkeypatch"], pages["release"]
    assert "Hidden test: rope_rotate differs from the reference on unseen inputs" in patched
    assert "NotImplementedError raised while this cell" in release


def test_grade_driver_exit_status_flags_failures(course, tmp_path):
    with pytest.raises(SystemExit, match="no release"):
        grade.grade_class(course, "no_such_assignment")


@pytest.mark.parametrize("assignment", ["a2_moe_routing", "a3_grpo"])
def test_other_assignments_full_marks_and_zero(course, assignment):
    release(course, assignment)
    submit(course, assignment, "solved", reference_solutions(course, assignment))
    submit(course, assignment, "release")
    results = {r.student: r for r in grade.grade_class(course, assignment, jobs=2, timeout=240,
                                                       progress=lambda line: None)}  # one batch, both students
    assert results["solved"].status == "ok" and results["solved"].score == results["solved"].max_score - 2
    assert results["release"].status == "ok" and results["release"].score == 0
