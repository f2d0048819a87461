"""Autograde a class of generated submissions per lab with assignments/grade.py, in its sandbox, and print
submissions per minute for each lab.

    python benchmarks/autograde.py                       # 100 submissions of every lab, 2 at a time
    python benchmarks/autograde.py --n 10 --assignment a3_grpo

Submissions cycle through the reference solution, the unsolved release and partial solutions (one solved part
each), so the timing covers passing and failing tests. The course is a temporary copy; the repository is not touched.
Target: 100 submissions of each lab within 10 minutes on two cores, in the sandbox.
"""

from __future__ import annotations

import argparse
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
import grade

TARGET_N, TARGET_S = 100, 600


def solutions(course: Path, assignment: str) -> dict[str, str]:
    nb = nbformat.read(course / "source" / assignment / f"{assignment}.ipynb", as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: re.sub(r"[ \t]*### (BEGIN|END) SOLUTION\n", "", c.source)
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def make_class(course: Path, assignment: str, n: int) -> None:
    ref = solutions(course, assignment)
    variants = [ref, {}] + [{gid: code} for gid, code in ref.items()]
    release = nbformat.read(course / "release" / assignment / f"{assignment}.ipynb", as_version=4)
    for i in range(n):
        nb = nbformat.from_dict(release)
        chosen = variants[i % len(variants)]
        for cell in nb.cells:
            gid = cell.metadata.get("nbgrader", {}).get("grade_id")
            if gid in chosen:
                cell.source = chosen[gid]
        folder = course / "submitted" / f"student{i:03d}" / assignment
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{assignment}.ipynb")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=TARGET_N, help="number of submissions")
    parser.add_argument("--assignment", action="append", help="a lab (repeatable); default: every lab")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import judge
    labs = args.assignment or list(judge.PORTED)  # the labs the judge can grade
    rows, status = [], 0
    for lab in labs:
        seconds, results = grade_lab(lab, args.n, args.jobs)
        failed = [r for r in results if r.status != "ok"]
        per_minute = len(results) / seconds * 60
        projected = TARGET_N / per_minute * 60
        rows.append((lab, len(results), seconds, per_minute, projected, len(failed)))
        print(f"{lab}: {len(results)} submissions in {seconds:.1f} s with {args.jobs} jobs -> {per_minute:.1f} "
              f"submissions/minute; {len(failed)} not graded", flush=True)
        status |= bool(failed)
    print(f"\n| lab | submissions | seconds | per minute | projected for {TARGET_N} | within {TARGET_S} s |")
    print("|---|---|---|---|---|---|")
    for lab, n, seconds, per_minute, projected, _ in rows:
        print(f"| {lab} | {n} | {seconds:.0f} | {per_minute:.1f} | {projected:.0f} s | "
              f"{'yes' if projected <= TARGET_S else 'NO'} |")
    return 1 if status else 0


def grade_lab(lab: str, n: int, jobs: int) -> tuple[float, list]:
    """Release `lab` in a temporary course, hand in `n` generated submissions, grade them; (seconds, results)."""
    with tempfile.TemporaryDirectory(prefix="autograde-bench-") as tmp:
        course = Path(tmp)
        shutil.copy(ROOT / "assignments" / "nbgrader_config.py", course / "nbgrader_config.py")
        shutil.copytree(ROOT / "assignments" / "source" / lab, course / "source" / lab)
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", lab, "--force"],
                       cwd=course, env=env, check=True, capture_output=True)
        make_class(course, lab, n)
        start = time.perf_counter()
        results = grade.grade_class(course, lab, jobs=jobs, secret_file=course / "grading-secret",
                                    progress=lambda line: None)
        return time.perf_counter() - start, results


if __name__ == "__main__":
    sys.exit(main())
