"""Autograde a class of generated submissions with assignments/grade.py and print submissions per minute.

    python benchmarks/autograde.py                 # 100 submissions of a2_moe_routing, 2 at a time
    python benchmarks/autograde.py --n 10 --assignment a1_mla

Submissions cycle through the reference solution, the unsolved release and partial solutions (one solved part
each), so the timing covers passing and failing tests. The course is a temporary copy; the repository is not touched.
Target: 100 submissions within 10 minutes on the 2-core reference machine.
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
    parser.add_argument("--assignment", default="a2_moe_routing")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autograde-bench-") as tmp:
        course = Path(tmp)
        for name in ("nbgrader_config.py", "nbgrader_ext.py"):
            shutil.copy(ROOT / "assignments" / name, course / name)
        shutil.copytree(ROOT / "assignments" / "source" / args.assignment, course / "source" / args.assignment)
        env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
        subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", args.assignment, "--force"],
                       cwd=course, env=env, check=True, capture_output=True)
        make_class(course, args.assignment, args.n)
        start = time.perf_counter()
        results = grade.grade_class(course, args.assignment, jobs=args.jobs, progress=lambda line: None)
        seconds = time.perf_counter() - start
    failed = [r for r in results if r.status != "ok"]
    per_minute = len(results) / seconds * 60
    print(f"{args.assignment}: {len(results)} submissions in {seconds:.1f} s with {args.jobs} jobs "
          f"-> {per_minute:.1f} submissions/minute ({seconds / len(results):.2f} s each); {len(failed)} not graded")
    projected = TARGET_N / per_minute * 60
    print(f"projected for {TARGET_N}: {projected:.0f} s (target {TARGET_S} s): "
          f"{'within' if projected <= TARGET_S else 'OVER'} budget")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
