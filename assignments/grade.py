"""Autograde a class through the judge: ``python grade.py a1_mla [--jobs 2]``.

The judge never runs student code, and student code never runs where a grade is decided. For each submission:

1. ``submission.stage`` copies its regular files into a private staging folder (links, hard links, devices,
   FIFOs and oversized files are dropped, with the reason in the report); each notebook is checked for size and
   cell count before it is parsed, then rebuilt on the release (``submission.restore_structure``);
2. the notebook's code cells (setup, answers, the student's own; never a test cell) run in a bubblewrap sandbox
   (``sandbox.py``) in a plain IPython process, which then serves calls of the student's functions over a pipe;
3. the lab's judge (``judge/<lab>.py``), in this trusted process, runs its grade items: each draws inputs from
   the per-student seed (an HMAC of the course secret, the assignment and the student), calls the student's
   function through ``judge.remote.Remote``, and checks type, dtype, shape and values of the data that came back;
4. scores go into the course gradebook through ``nbgrader.api.Gradebook`` (manual scores survive a regrade), and
   ``autograded/<student>/<a>/`` gets the release with the student's answer cells and the judge's feedback in each
   test cell, written here: nothing the sandbox wrote or printed reaches ``autograded/`` or ``feedback/``.

It never writes to ``submitted/``. A "not graded" reason is always this driver's own (a refused notebook, a missing
sandbox, an internal error), never text from the submission. ``--resume`` skips unchanged submissions; Ctrl-C or
SIGTERM stops the batch cleanly. Without bubblewrap it refuses to grade unless ``--unsafe-no-sandbox`` is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

COURSE = Path(__file__).resolve().parent
sys.path.insert(0, str(COURSE))
import judge
import sandbox
import submission
from judge.core import Outcome, run_items
from judge.remote import Remote, Session, Settings

STATE = ".minimoe-grading.json"  # beside each autograded notebook: the submission hash it was graded from


@dataclass
class Result:
    student: str
    status: str = "ok"  # ok | failed | missing | interrupted | skipped | refused
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0
    flags: list[str] = field(default_factory=list)
    submission_sha256: str = ""


def course_secret(path: Path | None, course_id: str) -> bytes:
    """The per-course grading secret, created (mode 0600) on first use, outside the course folder by default."""
    if path is None:
        home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        path = home / "minimoe" / f"grading-secret-{course_id}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        print(f"created the course's grading secret at {path}: keep it (regrades repeat their hidden inputs only "
              "with it) and keep it away from students")
    return path.read_text().strip().encode()


def grading_seed(secret: bytes, assignment: str, student: str) -> str:
    return hmac.new(secret, f"{assignment}\0{student}".encode(), hashlib.sha256).hexdigest()


def id_problem(student: str) -> str | None:
    """Why a folder name cannot be graded as a student id (None: it can; glob and shell characters are fine)."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in student):
        return "the student id contains control characters (rename the folder)"
    if student.startswith("."):
        return "the student id starts with a dot (rename the folder)"
    return None


def file_name(student: str) -> str:
    """A file-name-safe, length-bounded name for `student` (logs): the id itself when it is plain and short."""
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", student):
        return student
    return re.sub(r"[^A-Za-z0-9_.-]", "_", student)[:80] + "-" + hashlib.sha256(student.encode()).hexdigest()[:12]


def _students(course: Path, assignment: str) -> tuple[list[str], dict[str, str]]:
    """Students with a submission folder, and those whose folder cannot be graded (with the reason)."""
    submitted, found, refused = course / "submitted", [], {}
    if not submitted.is_dir():
        return [], {}
    for entry in os.scandir(submitted):
        folder = Path(entry.path) / assignment
        if entry.is_symlink() or folder.is_symlink():
            refused[entry.name] = "the submission folder is a symbolic link (not followed)"
        elif entry.is_dir(follow_symlinks=False) and folder.is_dir():
            if problem := id_problem(entry.name):
                refused[entry.name] = problem
            else:
                found.append(entry.name)
    return sorted(found), refused


def _is_test(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    """The sources that run in the sandbox: every code cell but the tests (setup, answers, the student's own)."""
    return [c.source for c in nb.cells if c.cell_type == "code" and not _is_test(c)]


def feedback_text(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        mark = "passed" if o.passed else f"FAILED: {o.message}"
        lines.append(f"[{o.score:g}/{o.item.points:g}] {o.item.name}: {mark}")
    total = sum(o.score for o in outcomes)
    return "\n".join(lines + [f"grader: {total:g} of {sum(o.item.points for o in outcomes):g} points"]) + "\n"


def autograded_notebook(rebuilt: nbformat.NotebookNode, by_cell: dict[str, list[Outcome]]) -> nbformat.NotebookNode:
    """The rebuilt notebook (release + the student's cells), outputs cleared, each test cell showing the judge's
    items. Written on the trusted side; no output of the student's process is in it."""
    nb = nbformat.from_dict(rebuilt)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs, cell.execution_count = [], None
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if _is_test(cell) and gid in by_cell:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=feedback_text(by_cell[gid]))]
    return nb


def write_gradebook(course: Path, assignment: str, student: str, notebooks: dict[str, nbformat.NotebookNode],
                    release: dict[str, nbformat.NotebookNode], scores: dict[str, float],
                    timestamp: str | None) -> tuple[float, float]:
    """Auto scores of the test cells and manual-grading flags of the written answers into the course gradebook
    (a score already given by hand stays); returns the submission's (score, max score)."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning
    warnings.filterwarnings("ignore", category=SAWarning)  # nbgrader's own update_or_create_submission warns
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        gb.update_or_create_student(student)
        extra = {"timestamp": timestamp} if timestamp else {}
        gb.update_or_create_submission(assignment, student, **extra)
        for name, nb in notebooks.items():
            stub = {c.metadata["nbgrader"]["grade_id"]: c.source for c in release[name].cells
                    if c.metadata.get("nbgrader", {}).get("solution")}
            for cell in nb.cells:
                meta = cell.metadata.get("nbgrader", {})
                gid = meta.get("grade_id")
                if meta.get("grade"):
                    grade = gb.find_grade(gid, name.removesuffix(".ipynb"), assignment, student)
                    if _is_test(cell):
                        grade.auto_score = min(scores.get(gid, 0.0), grade.max_score)
                        grade.needs_manual_grade = False
                    else:
                        grade.auto_score = None
                        if grade.manual_score is None:
                            grade.needs_manual_grade = True
                if meta.get("solution"):
                    comment = gb.find_comment(gid, name.removesuffix(".ipynb"), assignment, student)
                    comment.auto_comment = "No response." if cell.source == stub.get(gid) else None
        gb.db.commit()
        final = gb.find_submission(assignment, student)
        return final.score, final.max_score


def stored_scores(course: Path, assignment: str, students: list[str]) -> dict[str, float | None]:
    """Each student's total score as the course gradebook holds it now (None: no submission recorded)."""
    from nbgrader.api import Gradebook, MissingEntry
    out = {}
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in students:
            try:
                out[student] = gb.find_submission(assignment, student).score
            except MissingEntry:
                out[student] = None
    return out


def _not_graded_note(course: Path, assignment: str, student: str, reason: str) -> None:
    """Feedback for a submission that could not be graded: what to fix (nbgrader writes none for it)."""
    folder = course / "feedback" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "NOT-GRADED.txt").write_text(f"Your submission of {assignment} could not be graded:\n\n{reason}\n\n"
                                           "Nothing was scored. Fix this and submit again, or ask your lecturer.\n")


class Batch:
    """What every submission of one grading run shares: course, lab, settings, secret, package copy, staging root."""

    def __init__(self, course: Path, assignment: str, *, limits: sandbox.Limits, settings: Settings,
                 use_sandbox: bool, secret: bytes, root: Path, log_dir: Path | None):
        self.course, self.assignment, self.limits, self.settings = course, assignment, limits, settings
        self.use_sandbox, self.secret, self.root, self.log_dir = use_sandbox, secret, root, log_dir
        self.lab = judge.lab(assignment)
        self.release = {p.name: nbformat.read(p, as_version=4)
                        for p in sorted((course / "release" / assignment).glob("*.ipynb"))}
        self.package = sandbox.copy_package(root / "package", self.lab.STUBS, assignment)
        self.gradebook_lock = threading.Lock()
        self.stopping = threading.Event()


def _timestamp(staged: Path) -> str | None:
    """The submission's timestamp.txt (nbgrader's format), when it is a small regular file that parses."""
    path = staged / "timestamp.txt"
    if not path.is_file() or path.stat().st_size > 100:
        return None
    from nbgrader.utils import parse_utc
    text = path.read_text(errors="replace").strip()
    try:
        parse_utc(text)
    except Exception:  # noqa: BLE001 (any unparsable text: no timestamp)
        return None
    return text


SUBMISSION_SECRET = re.compile(r"[A-Za-z0-9_=+/-]{1,200}")


def _feedback_keys(staged: Path) -> dict[str, str]:
    """What nbgrader's release_feedback needs beside the graded notebook (``timestamp.txt`` and the exchange's
    ``submission_secret.txt``, which names the student's feedback file in the exchange): copied from the staged
    submission only when each is a small regular file of the expected form."""
    keys = {}
    stamp = _timestamp(staged)
    if stamp is not None:
        keys["timestamp.txt"] = stamp
    path = staged / "submission_secret.txt"
    if path.is_file() and not path.is_symlink() and path.stat().st_size <= 256:
        text = path.read_text(errors="replace").strip()
        if SUBMISSION_SECRET.fullmatch(text):
            keys["submission_secret.txt"] = text
    return keys


def grade_one(batch: Batch, student: str) -> Result:
    """Grade one submission; any failure of this driver becomes a 'failed' result naming its own cause."""
    start = time.perf_counter()
    if batch.stopping.is_set():
        return Result(student, status="interrupted", reason="grading was stopped before this submission")
    work = Path(tempfile.mkdtemp(prefix="s-", dir=batch.root))
    log_path = work / "log.txt"
    try:
        result = _grade(batch, student, work, log_path)
    except Exception as err:  # noqa: BLE001 (one submission never stops the batch)
        with open(log_path, "a") as f:
            f.write(traceback.format_exc())
        result = Result(student, status="failed", reason=f"internal error of the grader ({type(err).__name__}); "
                                                         "see its log")
    if batch.log_dir is not None and log_path.exists():
        shutil.copyfile(log_path, batch.log_dir / f"{file_name(student)}.log")
    shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _grade(batch: Batch, student: str, work: Path, log_path: Path) -> Result:
    course, assignment = batch.course, batch.assignment
    result = Result(student)
    staged = work / "submission"
    dropped = submission.stage(course / "submitted" / student / assignment, staged)
    result.submission_sha256 = submission.submission_hash(staged)
    if dropped:
        result.flags.append(f"{len(dropped)} file(s) dropped: " + "; ".join(dropped[:5]))
    log_path.write_text("".join(f"staging: {d}\n" for d in dropped))
    try:
        for name in batch.release:
            why = [d for d in dropped if d.startswith(f"{name}: ")]
            if why:
                raise submission.UnreadableSubmission(f"{why[0]}: clear its outputs and delete empty cells, save "
                                                      "it as a plain file (not a link) and submit again")
        raw = {name: submission.read_notebook(staged / name) for name in batch.release}
    except submission.UnreadableSubmission as err:
        result.status, result.reason = "failed", str(err)
        _not_graded_note(course, assignment, student, str(err))
        return result
    rebuilt, notes = {}, []
    for name, nb in raw.items():
        rebuilt[name], repaired = submission.restore_structure(nb, batch.release[name])
        notes += repaired
    with open(log_path, "a") as f:
        f.write("".join(f"repaired: {n}\n" for n in sorted(set(notes))))
    outcomes: list[Outcome] = []
    seed = grading_seed(batch.secret, assignment, student)
    for name, nb in rebuilt.items():
        session = Session(code_cells(nb), staged, batch.package, batch.limits, batch.settings, batch.use_sandbox,
                          log_path)
        try:
            outcomes += run_items(batch.lab.ITEMS, Remote(session), seed)
        finally:
            session.close()
        if session.killed:
            result.flags.append(f"sandbox stopped: {session.killed}")
        if session.starts > 1:
            result.flags.append(f"the student's process was started {session.starts} times (it died or hung)")
    if batch.stopping.is_set():
        return Result(student, status="interrupted", reason="grading was stopped while this submission ran")
    by_cell: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_cell.setdefault(o.item.cell, []).append(o)
    scores = {cell: sum(o.score for o in items) for cell, items in by_cell.items()}
    with batch.gradebook_lock:
        result.score, result.max_score = write_gradebook(course, assignment, student, rebuilt, batch.release,
                                                         scores, _timestamp(staged))
        dest = course / "autograded" / student / assignment
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name, nb in rebuilt.items():
            nbformat.write(autograded_notebook(nb, by_cell), dest / name)
        for name, text in _feedback_keys(staged).items():
            (dest / name).write_text(text)
        (dest / STATE).write_text(json.dumps({"submission_sha256": result.submission_sha256, "score": result.score,
                                              "max_score": result.max_score}))
    return result


def _already_graded(course: Path, assignment: str, student: str, root: Path) -> Result | None:
    """With --resume: the earlier result if this submission is unchanged since it was graded."""
    state = course / "autograded" / student / assignment / STATE
    if not state.is_file():
        return None
    saved = json.loads(state.read_text())
    staged = Path(tempfile.mkdtemp(dir=root))
    submission.stage(course / "submitted" / student / assignment, staged / "s")
    digest = submission.submission_hash(staged / "s")
    shutil.rmtree(staged)
    if saved.get("submission_sha256") != digest or stored_scores(course, assignment, [student])[student] != saved.get(
            "score"):
        return None
    return Result(student, status="skipped", reason="unchanged since graded (--resume)", score=saved["score"],
                  max_score=saved["max_score"], submission_sha256=digest)


def sandbox_problem() -> str | None:
    return sandbox.sandbox_problem()


def grade_class(course: Path, assignment: str, students: list[str] | None = None, *, jobs: int = 1,
                limits: sandbox.Limits | None = None, settings: Settings | None = None, log_dir: Path | None = None,
                use_sandbox: bool = True, secret_file: Path | None = None, resume: bool = False,
                progress=print) -> list[Result]:
    course = course.resolve()
    limits, settings = limits or sandbox.Limits(), settings or Settings()
    if not (course / "gradebook.db").exists() or not (course / "release" / assignment).is_dir():
        raise SystemExit(f"no release of {assignment!r} in {course}: run `nbgrader generate_assignment "
                         f"{assignment} --force` there first")
    try:
        judge.lab(assignment)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if use_sandbox and (problem := sandbox_problem()):
        raise SystemExit(f"refusing to grade without a sandbox: {problem}.\nStudent code would run as you, with "
                         "your files and network. To grade anyway (not for assessed work), pass --unsafe-no-sandbox.")
    everyone, refused = _students(course, assignment)
    asked = everyone + sorted(refused) if students is None else students
    results = [Result(s, status="refused", reason=refused[s]) for s in asked if s in refused]
    results += [Result(s, status="missing", reason="no submitted/<student>/<assignment> folder")
                for s in asked if s not in everyone and s not in refused]
    todo = [s for s in asked if s in everyone]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    secret = course_secret(secret_file, "minimoe")
    root = Path(tempfile.mkdtemp(prefix=f"minimoe-grade-{assignment}-"))
    graded: list[Result] = []
    previous = {}
    try:
        if resume:
            done = [r for s in todo if (r := _already_graded(course, assignment, s, root))]
            results += done
            todo = [s for s in todo if s not in {r.student for r in done}]
            if done:
                progress(f"--resume: {len(done)} unchanged submission(s) skipped")
        import torch
        torch.set_num_threads(1)
        batch = Batch(course, assignment, limits=limits, settings=settings, use_sandbox=use_sandbox, secret=secret,
                      root=root, log_dir=log_dir)

        def stop(signum, frame):
            if not batch.stopping.is_set():
                progress(f"\n{signal.Signals(signum).name}: stopping; submissions in progress are abandoned, the "
                         "rest is not started")
                batch.stopping.set()

        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(grade_one, batch, s) for s in todo]
            for future in concurrent.futures.as_completed(futures):
                r = future.result()
                graded.append(r)
                shown = f"{r.score:g}/{r.max_score:g}" if r.status == "ok" else f"{r.status.upper()}: {r.reason}"
                progress(f"[{len(graded)}/{len(todo)}] {r.student!r}: {shown} ({r.seconds:.1f} s)"
                         + (f"  flagged: {', '.join(r.flags)}" if r.flags else ""))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(root, ignore_errors=True)
    return sorted(results + graded, key=lambda r: r.student)


def verify_gradebook(course: Path, assignment: str, results: list[Result]) -> list[str]:
    """Differences between the scores this run graded and what the course gradebook holds now."""
    mine = {r.student: r.score for r in results if r.status in ("ok", "skipped")}
    stored = stored_scores(course.resolve(), assignment, sorted(mine))
    return [f"{s!r}: graded {mine[s]:g}, the gradebook holds {stored[s]}" for s in sorted(mine)
            if stored[s] is None or abs(stored[s] - mine[s]) > 1e-9]


def summary(results: list[Result], mismatches: list[str]) -> str:
    bad = [r for r in results if r.status not in ("ok", "skipped")]
    flagged = [r for r in results if r.flags]
    lines = [f"\n{len(results) - len(bad)} of {len(results)} submissions graded; {len(flagged)} flagged for review."]
    if bad:
        lines += ["", "!" * 78,
                  f"{len(bad)} SUBMISSION(S) NOT GRADED — their 0 in `nbgrader export` is NOT a grade:"]
        lines += [f"  {r.student!r}: {r.status}: {r.reason}" for r in bad]
        lines += ["!" * 78]
    if mismatches:
        lines += ["", "!" * 78, "THE GRADEBOOK DIFFERS FROM WHAT WAS GRADED (something else wrote it):"]
        lines += [f"  {m}" for m in mismatches] + ["!" * 78]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("assignment")
    parser.add_argument("--course", type=Path, default=COURSE, help="the nbgrader course folder")
    parser.add_argument("--student", action="append", help="grade only these students (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="submissions graded at once")
    parser.add_argument("--cpu-seconds", type=float, default=300.0,
                        help="CPU time of a submission's whole sandbox, all calls together")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="CPU seconds per call of a function")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="memory of a submission's whole sandbox, tmpfs included (0: none)")
    parser.add_argument("--max-procs", type=int, default=64, help="processes in a submission's sandbox")
    parser.add_argument("--resume", action="store_true", help="skip students whose submission is unchanged")
    parser.add_argument("--secret-file", type=Path, help="the course's grading secret (default: "
                                                         "~/.config/minimoe/grading-secret-minimoe, created once)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run student code without bubblewrap, as you (never for assessed work)")
    parser.add_argument("--logs", type=Path, help="keep each submission's log in this folder")
    parser.add_argument("--report", type=Path, help="write the results as .csv or .json")
    args = parser.parse_args(argv)
    limits = sandbox.Limits(memory_bytes=int(args.memory_gb * 2**30), max_procs=args.max_procs,
                            cpu_seconds=args.cpu_seconds)
    results = grade_class(args.course, args.assignment, args.student, jobs=args.jobs, limits=limits,
                          settings=Settings(call_cpu_seconds=args.call_seconds), log_dir=args.logs,
                          use_sandbox=not args.unsafe_no_sandbox, secret_file=args.secret_file, resume=args.resume)
    mismatches = verify_gradebook(args.course, args.assignment, results)
    print(summary(results, mismatches))
    if args.report:
        rows = [asdict(r) | {"flags": "; ".join(r.flags)} for r in results]
        if args.report.suffix == ".json":
            args.report.write_text(json.dumps(rows, indent=1))
        else:
            with open(args.report, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["student"])
                writer.writeheader()
                writer.writerows(rows)
    if any(r.status == "interrupted" for r in results):
        return 130
    return 3 if mismatches else 2 if any(r.status not in ("ok", "skipped") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
