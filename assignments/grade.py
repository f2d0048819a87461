"""Autograde a whole class with nbgrader, safely: ``python grade.py a1_mla [--jobs 2] [--timeout 600]``.

nbgrader alone (0.9.6, see ``shared/reference/tooling.md``) runs student code as the grader, in a folder beside
``source/`` and ``gradebook.db`` (which hold the hidden tests in plain text), has no time budget per submission,
and silently drops a submission whose kernel dies (``os._exit``, out of memory): the export then shows 0. This driver:

- grades each student in a throw-away copy of the course that has no ``source/``, against a private copy of the
  gradebook whose cell sources are blanked (``nbgrader_ext.ScrubGradebook``) once the test cells have been restored,
  and deletes the sanitised notebook nbgrader leaves in the kernel's folder before executing it
  (``ScrubAutogradedInput``), so the submission's code finds no hidden tests beside it;
- runs ``nbgrader autograde <a> --student=<s> --force`` for each submission in a fresh process of its own session,
  forked from a server that imported nbgrader once (``--fork-server``; saves ~4 s of CPU per submission), under a
  time budget and a memory limit; its whole session is killed afterwards (the kernel exits with its parent), so one
  submission cannot stall or sink the batch; ``--jobs`` submissions are graded at once, each in its own course copy;
- reports every submission nbgrader failed or dropped, loudly, and exits with status 2;
- copies the scores into the course gradebook (kept manual scores survive a re-run; an automatic score never
  exceeds the cell's points) and the autograded notebook into ``autograded/``;
- flags submissions whose code touches the grader's machinery (``sys.setprofile``, ``sys.modules``, the gradebook,
  ``os._exit``, the reference modules …) for a human look;
- never writes to ``submitted/``: it only reads it (and copies it).

It cannot sandbox: a submission runs as the grader's user and could still search the disk. For an exam, run this
script inside a container or as a user that cannot read the course directory (see README.md).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Self

COURSE = Path(__file__).resolve().parent
# Patterns in a submission's own cells that deserve a human look (they are not penalised automatically).
SUSPICIOUS = {
    "kills the kernel": r"os\._exit|os\.kill|signal\.",
    "exits": r"sys\.exit|\bexit\(|\bquit\(",
    "patches the interpreter": r"sys\.setprofile|sys\.settrace|sys\.modules|builtins|__import__|importlib",
    "inspects frames or sources": r"_getframe|inspect\.|f_locals|f_back|getsource",
    "reads grader files": r"gradebook|source/|nbgrader|HIDDEN TESTS|\.ipynb",
    "runs processes": r"subprocess|os\.system|os\.popen|multiprocessing|threading|os\.fork",
    "reassigns library functions": r"^\s*(torch|math|np|numpy)\.[\w.]+\s*=[^=]",
    "imports a reference module": r"minimoe\.(attention\.(rope|mla)|moe\.(gate|balance)|rl)\b",
}


@dataclass
class Result:
    student: str
    status: str = "ok"  # ok | failed | missing
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0
    flags: list[str] = field(default_factory=list)


def _students(course: Path, assignment: str) -> list[str]:
    submitted = course / "submitted"
    return sorted(p.name for p in submitted.iterdir() if (p / assignment).is_dir()) if submitted.is_dir() else []


def _release_cells(course: Path, assignment: str) -> set[str]:
    """Sources of the locked cells (instructions, tests) handed out; a submission's other cells are its own."""
    import nbformat
    cells = set()
    for path in (course / "release" / assignment).glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.metadata.get("nbgrader", {}).get("locked"):
                cells.add(cell.source)
    return cells


def flags_for(submission: Path, locked: set[str]) -> list[str]:
    import nbformat
    found = set()
    for path in sorted(submission.glob("*.ipynb")):
        try:
            cells = nbformat.read(path, as_version=4).cells
        except (OSError, ValueError) as err:  # an unreadable notebook is itself worth a look
            found.add(f"unreadable notebook {path.name}: {type(err).__name__}")
            continue
        own = "\n".join(c.source for c in cells if c.cell_type == "code" and c.source not in locked)
        found.update(name for name, pattern in SUSPICIOUS.items() if re.search(pattern, own, re.MULTILINE))
    return sorted(found)


def _stage(course: Path, assignment: str, student: str, root: Path) -> tuple[Path, Path]:
    """A course copy holding only the config and this submission, and a private gradebook copy beside it."""
    stage, db = root / "course", root / "db" / "gradebook.db"
    (stage / "submitted" / student).mkdir(parents=True)
    db.parent.mkdir(mode=0o700)
    shutil.copytree(course / "submitted" / student / assignment, stage / "submitted" / student / assignment)
    for name in ("nbgrader_config.py", "nbgrader_ext.py"):
        shutil.copy(course / name, stage / name)
    with sqlite3.connect(course / "gradebook.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    with open(stage / "nbgrader_config.py", "a") as f:
        f.write("\n# Added by grade.py for this staging copy only.\n"
                "from nbgrader_ext import ScrubAutogradedInput, ScrubGradebook  # noqa: E402\n"
                f"c.CourseDirectory.db_url = {'sqlite:///' + str(db)!r}\n"
                "c.Autograde.sanitize_preprocessors = c.Autograde.sanitize_preprocessors + [ScrubGradebook]\n"
                "c.Autograde.autograde_preprocessors = [ScrubAutogradedInput, *c.Autograde.autograde_preprocessors]\n"
                f"c.ScrubGradebook.db_path = {str(db)!r}\n")
    return stage, db


def _merge(course: Path, db: Path, stage: Path, assignment: str, student: str) -> tuple[float, float]:
    """Copy this submission's automatic scores and comments into the course gradebook; returns (score, max)."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning
    warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's own update_or_create_submission warns
    with Gradebook(f"sqlite:///{db}") as staged, Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        sub = staged.find_submission(assignment, student)
        gb.update_or_create_student(student)
        gb.update_or_create_submission(assignment, student, timestamp=sub.timestamp)
        for nb in sub.notebooks:
            target = gb.find_submission_notebook(nb.name, assignment, student)
            target.flagged = nb.flagged
            target.late_submission_penalty = nb.late_submission_penalty
            for grade in nb.grades:
                mine = gb.find_grade(grade.name, nb.name, assignment, student)
                mine.auto_score = None if grade.auto_score is None else min(grade.auto_score, mine.max_score)
                if mine.manual_score is None:  # a score already given by hand stays
                    mine.needs_manual_grade = grade.needs_manual_grade
            for comment in nb.comments:
                gb.find_comment(comment.name, nb.name, assignment, student).auto_comment = comment.auto_comment
        gb.db.commit()
        final = gb.find_submission(assignment, student)
        score, max_score = final.score, final.max_score
    dest = course / "autograded" / student / assignment
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(stage / "autograded" / student / assignment, dest)
    return score, max_score


# The nbgrader process of every submission is forked from one server process that has imported nbgrader and its
# dependencies once (otherwise ~4 s of CPU per submission, half of it jsonschema building its rfc3987 grammar). Each
# submission still gets its own process, session, course copy, gradebook copy, memory limit and kernel.
_PRELOAD = ["nbgrader.apps.nbgraderapp", "nbgrader.apps.autogradeapp", "nbgrader.preprocessors", "nbgrader.api",
            "nbclient", "jupyter_client", "jupyter_client.provisioning", "sqlalchemy", "alembic"]


def _serve_forks() -> None:
    """The fork server (``python grade.py --fork-server``): reads one JSON request per line on stdin, forks a
    grading process for each, and writes ``started <id> <pid>`` and ``exited <id> <status>`` lines on stdout."""
    import importlib
    import selectors
    for name in _PRELOAD:
        importlib.import_module(name)
    children: dict[int, int] = {}
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(0, selectors.EVENT_READ)
        while True:
            if sel.select(timeout=0.05 if children else None):
                chunk = os.read(0, 65536)
                if not chunk:  # the driver is gone: so is everything it started
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                    os._exit(0)
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    request = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _autograde_child(**request["args"])  # never returns
                    children[pid] = request["id"]
                    os.write(1, f"started {request['id']} {pid}\n".encode())
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                os.write(1, f"exited {children.pop(pid)} {os.waitstatus_to_exitcode(status)}\n".encode())


class _ForkServer:
    """Driver side of ``_serve_forks``: ``run(...)`` grades one staged submission and waits for its process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--fork-server"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tempfile.gettempdir())
        self.lock = threading.Lock()
        self.next_id = 0
        self.events: dict[int, threading.Event] = {}
        self.replies: dict[int, dict[str, int]] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, rid, value = line.decode().split()
            with self.lock:
                self.replies.setdefault(int(rid), {})[kind] = int(value)
                self.events[int(rid)].set()
        with self.lock:  # the server died: nothing more will come
            for rid, event in self.events.items():
                self.replies.setdefault(rid, {}).setdefault("started", 0)
                self.replies[rid].setdefault("exited", -int(signal.SIGKILL))
                event.set()

    def _wait(self, rid: int, kind: str, timeout: float | None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:
                if kind in self.replies[rid]:
                    return self.replies[rid][kind]
                self.events[rid].clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.events[rid].wait(left)

    def run(self, args: dict, timeout: float) -> tuple[int, bool]:
        """Start ``_autograde_child(**args)``; returns (its exit status, whether `timeout` ran out and it was killed)."""
        with self.lock:
            rid, self.next_id = self.next_id, self.next_id + 1
            self.events[rid] = threading.Event()
            self.replies[rid] = {}
            self.proc.stdin.write(json.dumps({"id": rid, "args": args}).encode() + b"\n")
            self.proc.stdin.flush()
        pid = self._wait(rid, "started", None)
        status = self._wait(rid, "exited", timeout)
        over = status is None
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # its session, and whatever is left in it
                os.killpg(pid, signal.SIGKILL)
        if over:
            status = self._wait(rid, "exited", None)
        return status, over

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.reader.join()


def _autograde_child(stage: str, assignment: str, student: str, env: dict[str, str], memory_bytes: int,
                     log_path: str) -> None:
    """Body of one submission's grading process: ``nbgrader autograde <a> --student=<s> --force`` in `stage`."""
    os.setsid()  # its own session: the parent kills the whole group, with anything the submission left running
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if memory_bytes > 0:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.chdir(stage)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["nbgrader", "autograde", assignment, f"--student={student}", "--force"]
    code = 0
    try:
        from nbgrader.apps.nbgraderapp import NbGraderApp
        NbGraderApp.launch_instance(argv=sys.argv[1:])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except BaseException:  # noqa: BLE001 (reported through the log and the exit status)
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_autograde(server: _ForkServer, stage: Path, assignment: str, student: str, env: dict[str, str],
                   timeout: int, memory_gib: float, log_path: Path) -> tuple[int, str]:
    """Grade one staged submission in a fresh process under `timeout` seconds; returns (exit status, its log).

    The status follows ``timeout(1)``: 124 when the budget ran out, 128 + n when a signal n killed the process."""
    status, over = server.run({"stage": str(stage), "assignment": assignment, "student": student, "env": env,
                               "memory_bytes": int(memory_gib * 2**30), "log_path": str(log_path)}, timeout)
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    return (124 if over else status if status >= 0 else 128 - status), log


def grade_one(server: _ForkServer, course: Path, assignment: str, student: str, timeout: int, memory_gib: float,
              locked: set[str], merge_lock: threading.Lock, log_dir: Path | None) -> Result:
    result = Result(student)
    start = time.perf_counter()
    result.flags = flags_for(course / "submitted" / student / assignment, locked)
    with tempfile.TemporaryDirectory(prefix="grade-") as tmp:
        stage, db = _stage(course, assignment, student, Path(tmp))
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # nbgrader runs alembic
        env = dict(os.environ, PATH=path, NBGRADER_SCRUB_OK=str(db), PYTHONUNBUFFERED="1")
        code, log = _run_autograde(server, stage, assignment, student, env, timeout, memory_gib, db.parent / "nbgrader.log")
        if log_dir is not None:
            (log_dir / f"{student}.log").write_text(log)
        notebooks = list((stage / "autograded" / student / assignment).glob("*.ipynb"))
        if code == 124:
            result.status, result.reason = "failed", f"over the {timeout} s budget (killed)"
        elif code > 128:
            result.status, result.reason = "failed", f"the grading process was killed (signal {code - 128})"
        elif "Removing failed assignment" in log or code != 0:
            died = re.search(r"(DeadKernelError|Kernel died[^\n]*|MemoryError)", log)
            result.status = "failed"
            result.reason = (f"nbgrader dropped it (exit {code})" + (f": {died.group(1)}" if died else "; see its log"))
        elif not notebooks:
            result.status, result.reason = "failed", "no autograded notebook was written"
        else:
            with merge_lock:
                result.score, result.max_score = _merge(course, db, stage, assignment, student)
    result.seconds = time.perf_counter() - start
    return result


def grade_class(course: Path, assignment: str, students: list[str] | None = None, *, jobs: int = 1,
                timeout: int = 600, memory_gib: float = 8.0, log_dir: Path | None = None,
                progress=print) -> list[Result]:
    course = course.resolve()
    if not (course / "gradebook.db").exists() or not (course / "release" / assignment).is_dir():
        raise SystemExit(f"no release of {assignment!r} in {course}: run `nbgrader generate_assignment "
                         f"{assignment} --force` there first")
    everyone = _students(course, assignment)
    students = everyone if students is None else students
    missing = [Result(s, status="missing", reason="no submitted/<student>/<assignment> folder")
               for s in students if s not in everyone]
    todo = [s for s in students if s in everyone]
    locked = _release_cells(course, assignment)
    lock = threading.Lock()
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    results = []
    server = _ForkServer()
    with server, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(grade_one, server, course, assignment, s, timeout, memory_gib, locked, lock, log_dir)
                   for s in todo]
        for future in concurrent.futures.as_completed(futures):
            r = future.result()
            results.append(r)
            shown = f"{r.score:g}/{r.max_score:g}" if r.status == "ok" else f"FAILED: {r.reason}"
            progress(f"[{len(results)}/{len(todo)}] {r.student}: {shown} ({r.seconds:.1f} s)"
                     + (f"  flagged: {', '.join(r.flags)}" if r.flags else ""))
    return sorted(results + missing, key=lambda r: r.student)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--course", type=Path, default=COURSE, help="the nbgrader course folder")
    parser.add_argument("--student", action="append", help="grade only these students (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at once")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per submission")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="address-space limit per submission (0: none)")
    parser.add_argument("--logs", type=Path, help="keep each submission's nbgrader log in this folder")
    parser.add_argument("--report", type=Path, help="write the results as .csv or .json")
    args = parser.parse_args(argv)
    results = grade_class(args.course, args.assignment, args.student, jobs=args.jobs, timeout=args.timeout,
                          memory_gib=args.memory_gb, log_dir=args.logs)
    bad = [r for r in results if r.status != "ok"]
    flagged = [r for r in results if r.flags]
    print(f"\n{len(results) - len(bad)} of {len(results)} submissions graded; {len(flagged)} flagged for review.")
    if bad:
        print("\n" + "!" * 78 + f"\n{len(bad)} SUBMISSION(S) NOT GRADED — their 0 in `nbgrader export` is NOT a grade:")
        for r in bad:
            print(f"  {r.student}: {r.reason}")
        print("!" * 78)
    if args.report:
        rows = [asdict(r) | {"flags": "; ".join(r.flags)} for r in results]
        if args.report.suffix == ".json":
            args.report.write_text(json.dumps(rows, indent=1))
        else:
            with open(args.report, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["student"])
                writer.writeheader()
                writer.writerows(rows)
    return 2 if bad else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--fork-server"]:
        _serve_forks()
    else:
        sys.exit(main())
