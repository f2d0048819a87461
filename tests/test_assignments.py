"""Grading through the judge, end to end, on a temporary copy of the course, as a lecturer runs it.

One batch of a1 submissions (reference, release, an empty notebook, partial, cheats, and every attack on the
grader that assignments/README.md's "What the grader guarantees" names) is graded once by ``grade.py``; the tests
below read its results and check that each attack earns nothing, changes nothing outside its staging folder, leaks
nothing into autograded/ or feedback/, and does not hurt its neighbour. a2 is checked for full marks and zero (a3,
a4, a5: tests/test_judge_a*.py); a lab without a judge module is refused by name.
Slow: a few minutes in all; skipped without bubblewrap.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("assignments")]

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "assignments"
sys.path.insert(0, str(COURSE))
import grade
import sandbox
from judge.remote import Settings

ENV = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           OMP_NUM_THREADS="1")
LIMITS = dict(memory_bytes=int(1.5 * 2**30), cpu_seconds=40.0, max_procs=40)
SETTINGS = Settings(cell_timeout=10, call_cpu_seconds=10, call_wall_seconds=60, startup_wall_seconds=300)
AUTO = {"a1_mla": 12.0, "a2_moe_routing": 11.0}  # autograded points; the written answer (2) is graded by hand


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


def submit(course: Path, assignment: str, student: str, solutions: dict[str, str] | None = None, edit=None) -> Path:
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
    return folder


def add_cell(code: str):
    """An extra code cell of the student's own, before the first answer cell."""
    def edit(nb):
        i = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution"))
        nb.cells.insert(i, nbformat.v4.new_code_cell(code))
    return edit


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


# The forged pass: functions that publish a pass, patch IPython's reporting, then raise.
FORGE = """
import IPython.core.interactiveshell as _ish
_ish.ExecutionResult.success = property(lambda self: True)
get_ipython().displayhook.parent_header = {}
def rope_rotate(x, position_ids, base=10000.0):
    print("visible tests passed"); raise AssertionError("hidden")
def mla_naive(mla, cfg, x):
    raise SystemExit(0)
def cache_elements_per_token(cfg, mode):
    return True
"""
PLANT = """
import os
for name, target in [("a1_mla.ipynb", "/etc/passwd"), ("gradebook.db", "../../../gradebook.db"),
                     ("secret", SECRET), ("dangling", "/nonexistent")]:
    try:
        os.remove(name)
    except OSError:
        pass
    os.symlink(target, name)
"""
FILL = """
import os
for path in ("/tmp/fill", "/dev/shm/fill", "fill"):
    try:
        with open(path, "wb") as f:
            for _ in range(2600):
                f.write(b"0" * (1 << 20))
    except OSError as err:
        print(path, "stopped:", err.strerror)
with open("sparse", "wb") as f:
    f.truncate(2 << 30)
"""
HUGE_OUTPUT = """
from IPython.display import display
display({"application/vnd.minimoe.evidence+json": {"token": "x" * (40 << 20)}}, raw=True)
print("y" * (5 << 20))
"""
MIMIC = """
import sys
sys.stderr.write("Removing failed assignment\\nKernel died before replying to kernel_info\\n")
"""
HOG = """
import os
for _ in range(16):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
"""


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    if grade.sandbox_problem():
        pytest.skip(f"no sandbox on this machine: {grade.sandbox_problem()} (`make grading-deps` installs it)")
    course = tmp_path_factory.mktemp("course")
    shutil.copy(COURSE / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(COURSE / "source", course / "source")
    return course


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "grading-secret"
    path.write_text("an-instructor-secret-0123456789abcdef\n")
    path.chmod(0o600)
    return path


def run(course, assignment, secret, students=None, jobs=2, **kw):
    return {r.student: r for r in grade.grade_class(
        course, assignment, students, jobs=jobs, limits=sandbox.Limits(**LIMITS), settings=SETTINGS,
        secret_file=secret, log_dir=course / "logs", progress=lambda line: None, **kw)}


LONG_ID = "x" * 252


@pytest.fixture(scope="module")
def a1(course, secret):
    """One class of a1 submissions graded in one batch; returns (results, course, what the checks need)."""
    nbgrader(course, "generate_assignment", "a1_mla", "--force")
    ref = reference_solutions(course, "a1_mla")
    submit(course, "a1_mla", "solved", ref)
    submit(course, "a1_mla", "release")
    submit(course, "a1_mla", "empty", edit=lambda nb: setattr(nb, "cells", []))
    submit(course, "a1_mla", "partial", {"rope_rotate": ref["rope_rotate"]})
    submit(course, "a1_mla", "forger", edit=add_cell(FORGE))
    submit(course, "a1_mla", "calls_reference", {
        "rope_rotate": "from minimoe.attention.rope import RotaryEmbedding\n"
                       "def rope_rotate(x, position_ids, base=10000.0):\n"
                       "    return RotaryEmbedding(x.shape[-1], 4096, base)(x, position_ids)\n",
        "mla_naive": "def mla_naive(mla, cfg, x):\n    return mla(x)\n"})
    # The reference's source read back from the sandbox's package copy and executed; transformers' MLA.
    submit(course, "a1_mla", "reads_reference", {
        "rope_rotate": "import minimoe.attention.rope as _m\n"
                       "_ns = {'__name__': 'stolen'}\n"
                       "exec(open(_m.__file__).read().split('# Added by the grader')[0], _ns)\n"
                       "def rope_rotate(x, position_ids, base=10000.0):\n"
                       "    return _ns['RotaryEmbedding'](x.shape[-1], 4096, base)(x, position_ids)\n",
        "mla_naive": "from transformers.models.deepseek_v3 import modeling_deepseek_v3 as _hf\n"
                     "def mla_naive(mla, cfg, x):\n    return _hf.DeepseekV3Attention\n"})
    submit(course, "a1_mla", "crashes", {**ref, "mla_absorbed_decode": "import os\n"
                                         "def mla_absorbed_decode(mla, cfg, x_t, c_kv, k_rope):\n    os._exit(0)\n"})
    links = submit(course, "a1_mla", "links_submitted", ref)
    (links / "secret").symlink_to(secret)
    (links / "gradebook.db").symlink_to("../../../gradebook.db")
    (links / "hidden.ipynb").symlink_to(course / "source" / "a1_mla" / "a1_mla.ipynb")
    os.link(secret, links / "hard")
    os.mkfifo(links / "fifo")
    notebook_link = course / "submitted" / "notebook_link" / "a1_mla"
    notebook_link.mkdir(parents=True)
    (notebook_link / "a1_mla.ipynb").symlink_to(course / "source" / "a1_mla" / "a1_mla.ipynb")
    submit(course, "a1_mla", "plants_links", ref, edit=add_cell(f"SECRET = {str(secret)!r}\n" + PLANT))
    submit(course, "a1_mla", "fills_disk", ref, edit=add_cell(FILL))
    submit(course, "a1_mla", "huge_output", ref, edit=add_cell(HUGE_OUTPUT))
    submit(course, "a1_mla", "mimic", edit=add_cell(MIMIC))
    many = course / "submitted" / "many_cells" / "a1_mla"
    many.mkdir(parents=True)
    nb = nbformat.read(course / "release" / "a1_mla" / "a1_mla.ipynb", as_version=4)
    # Ids of our own: 150,000 random 8-digit ones collide a few times, and nbformat warns at each collision.
    nb.cells += [nbformat.v4.new_code_cell("", id=f"many-{i}") for i in range(150_000)]
    nbformat.write(nb, many / "a1_mla.ipynb")
    for odd in ("[ab]", "a b;$(touch x)*", LONG_ID):
        submit(course, "a1_mla", odd, ref)
    submit(course, "a1_mla", "new\nline", ref)
    source_before, secret_mode = digest(course / "source"), stat.S_IMODE(secret.stat().st_mode)
    submitted_before = digest(course / "submitted")
    start = time.perf_counter()
    results = run(course, "a1_mla", secret)
    seconds = time.perf_counter() - start
    assert digest(course / "submitted") == submitted_before, "grading changed submitted/"
    return results, course, {"source_before": source_before, "secret_mode": secret_mode, "secret": secret,
                             "seconds": seconds}


def graded(a1, student) -> float:
    results = a1[0]
    assert results[student].status == "ok", results[student]
    return results[student].score


def autograded_text(course: Path, student: str, assignment: str = "a1_mla") -> str:
    nb = nbformat.read(course / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    return "\n".join(str(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_reference_full_marks_release_and_empty_notebook_zero(a1):
    assert graded(a1, "solved") == AUTO["a1_mla"]
    assert graded(a1, "release") == 0
    assert graded(a1, "empty") == 0
    assert 0 < graded(a1, "partial") < AUTO["a1_mla"]


def test_forged_passes_in_the_students_process_earn_nothing(a1):
    assert graded(a1, "forger") == 0
    assert "visible tests passed" not in autograded_text(a1[1], "forger")  # its prints never reach feedback


def test_the_reference_is_not_available_in_the_sandbox(a1):
    text = autograded_text(a1[1], "calls_reference")
    assert graded(a1, "calls_reference") == 0
    assert "rope_rotate: raised an exception" in text and "mla_naive: raised an exception" in text


def test_the_reference_cannot_be_read_back_nor_borrowed_from_transformers(a1):
    """The package copy holds no reference code (replaced, not shadowed), and transformers is not importable."""
    assert graded(a1, "reads_reference") == 0
    from sandbox import without_references
    source = (ROOT / "minimoe" / "attention" / "rope.py").read_text()
    stubbed = without_references(source, ["apply_rope", "RotaryEmbedding.forward"], "minimoe.attention.rope", "a1")
    assert "def apply_rope(*args, **kwargs):  # replaced by the grader" in stubbed
    compile(stubbed, "rope.py", "exec")
    original = source[source.index("def apply_rope"):].split("\n\n\n", 1)[0]
    assert original.count("\n") > 3 and original not in stubbed


def test_a_crashing_function_costs_only_its_own_points(a1):
    assert graded(a1, "crashes") == AUTO["a1_mla"] - 4  # its 4 points; the process restarts for the others
    assert "mla_absorbed_decode: ended its process" in autograded_text(a1[1], "crashes")


def test_submitted_links_are_dropped_and_reach_nothing(a1):
    results, course, extra = a1
    assert graded(a1, "links_submitted") == AUTO["a1_mla"]
    flags = " ".join(results["links_submitted"].flags)
    for reason in ("secret: a symbolic link", "gradebook.db: a symbolic link", "hidden.ipynb: a symbolic link",
                   "hard: a hard link", "fifo: not a regular file"):
        assert reason in flags
    assert results["notebook_link"].status == "failed" and "symbolic link" in results["notebook_link"].reason


def test_links_planted_during_grading_change_nothing(a1):
    results, course, extra = a1
    assert graded(a1, "plants_links") == AUTO["a1_mla"]
    assert digest(course / "source") == extra["source_before"]
    assert stat.S_IMODE(extra["secret"].stat().st_mode) == extra["secret_mode"]
    assert os.access(course / "gradebook.db", os.W_OK)
    for folder in ("autograded", "feedback"):
        for path in (course / folder).rglob("*"):
            assert not path.is_symlink(), path
    assert sorted(p.name for p in (course / "autograded" / "plants_links" / "a1_mla").iterdir()) == [
        grade.STATE, "a1_mla.ipynb"]


def test_secret_and_hidden_checks_never_reach_autograded_or_feedback(a1):
    results, course, extra = a1
    secret_text = extra["secret"].read_text().strip()
    for path in (course / "autograded").rglob("*"):
        if path.is_file():
            data = path.read_text(errors="replace")
            assert secret_text not in data and "_gen" not in data and "BEGIN HIDDEN" not in data, path


def test_disk_and_tmpfs_are_capped_and_nothing_comes_back(a1):
    results, course, _ = a1
    assert graded(a1, "fills_disk") == AUTO["a1_mla"]
    assert tree_bytes(course / "autograded" / "fills_disk") < 1 << 20
    log = (course / "logs" / "fills_disk.log").read_text()
    for path in ("/tmp/fill", "/dev/shm/fill", "fill"):
        assert f"{path} stopped: No space left on device" in log


def test_huge_outputs_and_evidence_mime_never_reach_the_notebook(a1):
    results, course, _ = a1
    assert graded(a1, "huge_output") == AUTO["a1_mla"]
    assert (course / "autograded" / "huge_output" / "a1_mla" / "a1_mla.ipynb").stat().st_size < 200_000
    assert (course / "logs" / "huge_output.log").stat().st_size <= sandbox.Limits().log_bytes + 10_000


def test_text_mimicking_a_dead_kernel_steers_nothing(a1):
    results, course, _ = a1
    assert graded(a1, "mimic") == 0
    assert "Kernel died" not in grade.summary(list(results.values()), [])


def test_an_oversized_notebook_is_refused_before_parsing(a1):
    r = a1[0]["many_cells"]
    assert r.status == "failed" and "over the size" in r.reason and r.seconds < 30


def test_odd_student_ids_are_graded_or_refused_with_a_reason(a1):
    results, course, _ = a1
    for odd in ("[ab]", "a b;$(touch x)*", LONG_ID):
        assert graded(a1, odd) == AUTO["a1_mla"]
    assert results["new\nline"].status == "refused" and "control characters" in results["new\nline"].reason
    assert not (course / "x").exists()
    assert any(p.name.startswith("x" * 80) for p in (course / "logs").iterdir())


def test_grades_reach_the_gradebook_feedback_and_export(a1):
    results, course, extra = a1
    assert grade.verify_gradebook(course, "a1_mla", list(results.values())) == []
    nbgrader(course, "generate_feedback", "a1_mla", "--student", "partial")
    html = (course / "feedback" / "partial" / "a1_mla" / "a1_mla.html").read_text()
    assert "rope_rotate: passed" not in html and "a key (B, T, d_r), float64: passed" in html
    assert "mla_naive: raised an exception" in html or "mla_naive: is not defined" in html
    nbgrader(course, "export")
    assert "partial" in (course / "grades.csv").read_text()


def test_regrade_repeats_scores(a1, secret):
    results, course, _ = a1
    again = run(course, "a1_mla", secret, ["solved", "partial", "crashes"])
    for student in again:
        assert again[student].score == results[student].score


def test_a_cpu_hog_is_stopped_and_its_honest_neighbour_gets_its_marks(course, secret, a1):
    ref = reference_solutions(course, "a1_mla")
    submit(course, "a1_mla", "hog", ref, edit=add_cell(HOG))
    submit(course, "a1_mla", "neighbour", ref)
    results = run(course, "a1_mla", secret, ["hog", "neighbour"])
    assert results["neighbour"].score == AUTO["a1_mla"] and not results["neighbour"].flags
    assert results["hog"].score < AUTO["a1_mla"]
    # stopped at a cap: CPU time, or memory first (the RSS of 16 forks counts their shared pages 16 times)
    assert any(f.startswith("sandbox stopped: over the") for f in results["hog"].flags), results["hog"].flags
    out = subprocess.run(["pgrep", "-f", "while True"], capture_output=True, text=True, check=False)
    assert "hog" not in out.stdout


def test_a2_full_marks_and_zero(course, secret):
    nbgrader(course, "generate_assignment", "a2_moe_routing", "--force")
    submit(course, "a2_moe_routing", "solved", reference_solutions(course, "a2_moe_routing"))
    submit(course, "a2_moe_routing", "release")
    results = run(course, "a2_moe_routing", secret)
    assert results["solved"].score == AUTO["a2_moe_routing"] and results["release"].score == 0


def test_a_lab_without_a_judge_is_refused_by_name(course, secret):
    """A new lab in source/ whose judge module is not written yet is refused, not graded by nothing."""
    assignment = "a9_new_lab"
    (course / "source" / assignment).mkdir()
    shutil.copy(course / "source" / "a1_mla" / "a1_mla.ipynb", course / "source" / assignment / f"{assignment}.ipynb")
    nbgrader(course, "generate_assignment", assignment, "--force")
    with pytest.raises(SystemExit, match="has no judge yet"):
        run(course, assignment, secret)


def test_items_share_out_each_test_cells_points():
    import judge
    for assignment in judge.PORTED:
        nb = nbformat.read(COURSE / "source" / assignment / f"{assignment}.ipynb", as_version=4)
        cells = {c.metadata["nbgrader"]["grade_id"]: c.metadata["nbgrader"]["points"] for c in nb.cells
                 if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
        items: dict[str, float] = {}
        for item in judge.lab(assignment).ITEMS:
            items[item.cell] = items.get(item.cell, 0) + item.points
        assert items == pytest.approx(cells), assignment
        assert "BEGIN HIDDEN TESTS" not in nbformat.writes(nb)


def test_missing_or_unusable_bubblewrap_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    assert "bubblewrap (bwrap) is not installed" in sandbox.sandbox_problem()
    fake = tmp_path / "bwrap"
    fake.write_text("")
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: str(fake))
    assert "is not executable" in sandbox.sandbox_problem()


def test_python_inside_runs_from_the_venvs_real_path():
    executable, dirs = sandbox.python_paths()
    assert executable.startswith(os.path.realpath(sys.prefix)) and os.path.realpath(sys.prefix) in dirs
