"""Autograde a class of real submissions per lab with ``assignments/grade.py --jobs 2``, sandboxed, through the
judge, and print submissions per minute for each lab.

    python benchmarks/autograde.py                       # 100 submissions of every lab the judge grades
    python benchmarks/autograde.py --n 20 --assignment a1_mla

The class is a mix a lecturer meets: the reference solution, the unsolved release, an empty notebook, partial
solutions (one part solved each), and a few attacks (a function that forges a pass and exits, one that calls the
lab's reference, one that ends its process, a notebook that plants symbolic links). Each submission is a notebook
file in ``submitted/<student>/<lab>/`` of a temporary copy of the course (the repository is not touched), graded by
running ``grade.py`` as a lecturer does; the result of every submission is checked (the reference full marks,
the release, the empty notebook and every attack zero, a partial strictly between), so a fast but wrong grader
fails here. Budget: 100 submissions of a lab within 10 minutes on two cores (5 minutes is the next goal).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))
import judge

TARGET_N, BUDGET_S, GOAL_S = 100, 600, 300

FORGE = """
import IPython.core.interactiveshell as _ish
_ish.ExecutionResult.success = property(lambda self: True)
get_ipython().displayhook.parent_header = {}
"""
FORGED_FUNCTION = "def {name}(*args, **kwargs):\n    print('visible tests passed')\n    raise SystemExit(0)\n"
CALLS_REFERENCE = ("import importlib\n"
                   "def {name}(*args, **kwargs):\n"
                   "    owner = importlib.import_module({module!r})\n"
                   "    for part in {attr!r}.split('.'):\n"
                   "        owner = getattr(owner, part)\n"
                   "    return owner(*args, **kwargs)\n")
EXITS = "import os\ndef {name}(*args, **kwargs):\n    os._exit(0)\n"
PLANT = """
import os
for name, target in [("{notebook}", "/etc/passwd"), ("gradebook.db", "../../../gradebook.db"),
                     ("dangling", "/nonexistent")]:
    try:
        os.remove(name)
    except OSError:
        pass
    os.symlink(target, name)
"""


def solutions(course: Path, lab: str) -> dict[str, str]:
    """grade_id -> the instructor's solution code, markers removed (what a perfect student writes)."""
    nb = nbformat.read(course / "source" / lab / f"{lab}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: re.sub(r"[ \t]*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", "", c.source)
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def function_name(code: str) -> str:
    return re.search(r"^def (\w+)\(", code, re.MULTILINE).group(1)


def variants(course: Path, lab: str) -> list[tuple[str, dict[str, str], str, str]]:
    """(kind, answer cells, extra cell before the first answer, expected result: full | zero | partial)."""
    ref = solutions(course, lab)
    names = {gid: function_name(code) for gid, code in ref.items()}
    module, stubbed = next(iter(judge.lab(lab).STUBS.items()))
    out = [("reference", ref, "", "full"), ("release", {}, "", "zero"), ("empty", {}, "", "zero")]
    gids = list(ref)  # in the notebook's order: a partial solution solves the first parts (later ones call them)
    out += [(f"partial-{i}", {g: ref[g] for g in gids[:i]}, "", "partial") for i in range(1, len(gids))]
    out += [("forges-and-exits", {g: FORGED_FUNCTION.format(name=n) for g, n in names.items()}, FORGE, "zero"),
            ("calls-reference", {g: CALLS_REFERENCE.format(name=n, module=module, attr=stubbed[0])
                                 for g, n in names.items()}, "", "zero"),
            ("ends-its-process", {g: EXITS.format(name=n) for g, n in names.items()}, "", "zero"),
            ("plants-links", ref, PLANT.format(notebook=f"{lab}.ipynb"), "full")]
    return out


def make_class(course: Path, lab: str, n: int) -> dict[str, tuple[str, str]]:
    """Hand in `n` submissions cycling through :func:`variants`; student -> (kind, expected result)."""
    release = nbformat.read(course / "release" / lab / f"{lab}.ipynb", as_version=4)
    kinds, students = variants(course, lab), {}
    for i in range(n):
        kind, answers, extra, expected = kinds[i % len(kinds)]
        nb = nbformat.from_dict(release)
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in answers:
                cell.source = answers[gid]
        if extra:
            first = next(j for j, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution"))
            nb.cells.insert(first, nbformat.v4.new_code_cell(extra))
        if kind == "empty":
            nb.cells = []
        student = f"student{i:03d}"
        folder = course / "submitted" / student / lab
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{lab}.ipynb")
        students[student] = (kind, expected)
    return students


def wrong_results(lab: str, rows: list[dict], students: dict[str, tuple[str, str]]) -> list[str]:
    """Submissions whose result is not what their kind must get (the written answer is graded by hand: 0 here)."""
    full, wrong = sum(item.points for item in judge.lab(lab).ITEMS), []
    for row in rows:
        kind, expected = students[row["student"]]
        score, top = row.get("score"), row.get("max_score")
        ok = row["status"] == "ok" and score is not None and (
            abs(score - full) < 1e-9 if expected == "full" else score == 0 if expected == "zero" else 0 < score < full)
        if not ok:
            wrong.append(f"{row['student']} ({kind}): {row['status']} {score}/{top} {row.get('reason', '')}")
    return wrong


def grade_lab(lab: str, n: int, jobs: int) -> tuple[float, list[dict], dict[str, tuple[str, str]], str]:
    """Release `lab` in a temporary course, hand in `n` submissions, grade them with grade.py in a subprocess;
    (seconds, report rows, students, the command)."""
    with tempfile.TemporaryDirectory(prefix="autograde-bench-") as tmp:
        course = Path(tmp) / "course"
        course.mkdir()
        shutil.copy(ROOT / "assignments" / "nbgrader_config.py", course / "nbgrader_config.py")
        shutil.copytree(ROOT / "assignments" / "source" / lab, course / "source" / lab)
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force"],
                       cwd=course, env=env, check=True, capture_output=True)
        students = make_class(course, lab, n)
        secret = Path(tmp) / "secret"
        secret.write_text("benchmark-secret-0123456789abcdef\n")
        secret.chmod(0o600)
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, str(ROOT / "assignments" / "grade.py"), lab, "--course", str(course), "--jobs",
               str(jobs), "--secret-file", str(secret), "--report", str(report)]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=course, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if not report.exists():
            raise SystemExit(f"grade.py wrote no report (exit {out.returncode}):\n{out.stdout[-3000:]}"
                             f"{out.stderr[-3000:]}")
        shown = "python assignments/grade.py " + " ".join(cmd[2:]).replace(tmp, "$TMP")
        return seconds, json.loads(report.read_text()), students, shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=TARGET_N, help="submissions per lab")
    parser.add_argument("--assignment", action="append", help="a lab (repeatable); default: every lab the judge "
                                                              "grades")
    parser.add_argument("--jobs", type=int, default=2, help="grade.py --jobs")
    args = parser.parse_args()
    labs = args.assignment or list(judge.PORTED)
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} before the run")
    rows, status = [], 0
    for lab in labs:
        seconds, results, students, command = grade_lab(lab, args.n, args.jobs)
        wrong = wrong_results(lab, results, students)
        per_minute = len(results) / seconds * 60
        rows.append((lab, len(results), seconds, per_minute))
        print(f"{lab}: {command}\n  {len(results)} submissions in {seconds:.1f} s -> {per_minute:.1f} submissions "
              f"per minute; {len(wrong)} with a wrong result; load average after {os.getloadavg()[0]:.1f}", flush=True)
        for line in wrong:
            print(f"  WRONG: {line}")
        status |= bool(wrong) or len(results) != args.n
    print(f"\n| lab | submissions | seconds | per minute | {TARGET_N} take | within {BUDGET_S} s | within {GOAL_S} s |")
    print("|---|---|---|---|---|---|---|")
    for lab, n, seconds, per_minute in rows:
        took = TARGET_N / per_minute * 60  # measured when n == TARGET_N, projected otherwise
        print(f"| {lab} | {n} | {seconds:.0f} | {per_minute:.1f} | {took:.0f} s | "
              f"{'yes' if took <= BUDGET_S else 'NO'} | {'yes' if took <= GOAL_S else 'no'} |")
    return 1 if status else 0


if __name__ == "__main__":
    sys.exit(main())
