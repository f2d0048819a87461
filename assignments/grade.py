"""Autograde a whole class with nbgrader, in a sandbox, on evidence: ``python grade.py a1_mla [--jobs 2]``.

nbgrader alone (0.9.6) runs student code as the grader beside ``source/`` and ``gradebook.db``, counts a test cell
as passed when its output shows no error (which the student's code can arrange), draws nothing from a secret, and
silently drops a submission whose kernel dies. For each submission this driver:

1. reads it and rebuilds every notebook on the release (``submission.restore_structure``): deleted, reordered or
   stripped cells, fake grade cells and pasted nbgrader markers cannot stop grading; an unreadable notebook is
   reported as not graded, with a feedback note saying what to fix;
2. stages a throw-away course copy with only this submission and a private gradebook copy, outside the sandbox;
3. runs ``nbgrader autograde`` in a fresh process (forked from a server that imported nbgrader once) under a time
   budget; nbgrader starts the student's kernel inside a bubblewrap sandbox (``sandbox.py``: no network, its own
   PID namespace, read-only system and package copy, only the submission's folder writable, memory and process
   caps over the whole sandbox) with ``MINIMOE_GRADING_SEED`` derived from a per-course secret, the assignment and
   the student, so hidden inputs are unpredictable and a regrade repeats them;
4. gives a test cell its points only on evidence that its code ran to its end (``nbgrader_ext.InjectEvidence`` /
   ``VerifyEvidence``: a per-run token only the grading process can compute, plus a check of IPython's execution
   machinery); tampering voids the tests and flags the submission;
5. after the sandbox is gone, copies the scores into the course gradebook (only this driver writes it; manual scores
   survive a re-run) and the autograded notebook into ``autograded/``; after the batch it reads the gradebook back
   and reports loudly any score that differs from what it graded.

It never writes to ``submitted/``. ``--resume`` skips students whose submission is unchanged since they were graded.
Ctrl-C or SIGTERM stops the batch cleanly: what was graded stays, the rest is listed as not graded, and no staging
folder is left behind. Without bubblewrap it refuses to grade unless ``--unsafe-no-sandbox`` is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import hmac
import json
import os
import re
import secrets
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

import nbformat

COURSE = Path(__file__).resolve().parent
sys.path.insert(0, str(COURSE))
import sandbox
import submission

STATE = ".minimoe-grading.json"  # beside each autograded notebook: the submission hash it was graded from


@dataclass
class Result:
    student: str
    status: str = "ok"  # ok | failed | missing | interrupted | skipped
    reason: str = ""
    score: float | None = None
    max_score: float | None = None
    seconds: float = 0.0
    flags: list[str] = field(default_factory=list)
    submission_sha256: str = ""


def _students(course: Path, assignment: str) -> list[str]:
    submitted = course / "submitted"
    return sorted(p.name for p in submitted.iterdir() if (p / assignment).is_dir()) if submitted.is_dir() else []


def _release(course: Path, assignment: str) -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted((course / "release" / assignment).glob("*.ipynb"))}


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


def _stage(course: Path, assignment: str, student: str, root: Path, notebooks: dict[str, nbformat.NotebookNode],
           settings: dict) -> tuple[Path, Path]:
    """A course copy holding only the config and this (rebuilt) submission, and a private gradebook copy beside it.
    Only ``course/autograded/<student>/<assignment>`` and ``kernel/`` are visible inside the sandbox."""
    stage, db = root / "course", root / "private" / "gradebook.db"
    db.parent.mkdir(parents=True, mode=0o700)
    folder = stage / "submitted" / student / assignment
    shutil.copytree(course / "submitted" / student / assignment, folder)
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / name)
    for name in ("nbgrader_config.py", "nbgrader_ext.py", "sandbox.py"):
        shutil.copy(course / name, stage / name)
    with sqlite3.connect(course / "gradebook.db") as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    (root / "kernel").mkdir()
    lines = ["", "# Added by grade.py for this staging copy only.",
             "from nbgrader_ext import InjectEvidence, ScrubAutogradedInput, VerifyEvidence  # noqa: E402",
             f"c.CourseDirectory.db_url = {'sqlite:///' + str(db)!r}",
             ("c.Autograde.autograde_preprocessors = [ScrubAutogradedInput, InjectEvidence, "
              "*c.Autograde.autograde_preprocessors]"),
             "_i = c.Autograde.autograde_preprocessors.index(BoundedExecute)",
             "c.Autograde.autograde_preprocessors.insert(_i + 1, VerifyEvidence)",
             "from sandbox import SandboxedKernelManager  # noqa: E402",
             "c.BoundedExecute.kernel_manager_class = SandboxedKernelManager",
             f"c.SandboxedKernelManager.socket_dir = {str(root / 'kernel')!r}",
             f"c.SandboxedKernelManager.verdict_file = {str(root / 'private' / 'verdict.json')!r}"]
    lines += [f"c.SandboxedKernelManager.{key} = {value!r}" for key, value in settings.items()]
    with open(stage / "nbgrader_config.py", "a") as f:
        f.write("\n".join(lines) + "\n")
    return stage, db


def _merge(course: Path, db: Path, stage: Path, assignment: str, student: str, digest: str) -> tuple[float, float]:
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
    (dest / STATE).write_text(json.dumps({"submission_sha256": digest, "score": score, "max_score": max_score}))
    return score, max_score


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
                    for pid in children:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(pid, 0)
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
        # Its own session: Ctrl-C in the terminal reaches the driver only, which then stops the server itself.
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--fork-server"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tempfile.gettempdir(),
                                     start_new_session=True)
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
            try:
                self.proc.stdin.write(json.dumps({"id": rid, "args": args}).encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):  # stopped (Ctrl-C, SIGTERM): nothing was started
                return -int(signal.SIGKILL), False
        pid = self._wait(rid, "started", None)
        status = self._wait(rid, "exited", timeout)
        over = status is None
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # its session, and whatever is left in it
                os.killpg(pid, signal.SIGKILL)
        if over:
            status = self._wait(rid, "exited", None)
        return status, over

    def stop(self) -> None:
        """Close the server's input: it kills every grading process it started (and so their sandboxes)."""
        with self.lock, contextlib.suppress(BrokenPipeError, ValueError, OSError):
            self.proc.stdin.close()

    def __enter__(self) -> _ForkServer:  # noqa: PYI034 (typing.Self needs 3.11)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
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
        from minimoe import _kernel_client
        _kernel_client.install()  # no cell waits out its timeout for a lost wake-up
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


def _not_graded_note(course: Path, assignment: str, student: str, reason: str) -> None:
    """Feedback for a submission that could not be graded: what to fix (nbgrader writes none for it)."""
    folder = course / "feedback" / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "NOT-GRADED.txt").write_text(f"Your submission of {assignment} could not be graded:\n\n{reason}\n\n"
                                           "Nothing was scored. Fix this and submit again, or ask your lecturer.\n")


class Batch:
    """What every submission of one grading run shares: course, settings, secret, fork server, staging root."""

    def __init__(self, course: Path, assignment: str, *, timeout: int, memory_gib: float, max_procs: int,
                 use_sandbox: bool, secret: bytes, root: Path, log_dir: Path | None):
        self.course, self.assignment, self.timeout, self.memory_gib = course, assignment, timeout, memory_gib
        self.max_procs, self.use_sandbox, self.secret, self.root, self.log_dir = (max_procs, use_sandbox, secret,
                                                                                   root, log_dir)
        self.release = _release(course, assignment)
        self.package = sandbox.copy_package(root / "package")
        self.merge_lock = threading.Lock()
        self.stopping = threading.Event()
        self.server = _ForkServer()


def grade_one(batch: Batch, student: str) -> Result:
    result = Result(student)
    if batch.stopping.is_set():
        return Result(student, status="interrupted", reason="grading was stopped before this submission")
    start = time.perf_counter()
    course, assignment = batch.course, batch.assignment
    folder = course / "submitted" / student / assignment
    result.submission_sha256 = submission.submission_hash(folder)
    try:
        raw = {name: submission.read_notebook(folder / name) for name in batch.release}
    except submission.UnreadableSubmission as err:
        result.status, result.reason = "failed", str(err)
        _not_graded_note(course, assignment, student, str(err))
        return result
    result.flags = submission.flags_for(list(raw.values()), list(batch.release.values()))
    notes, rebuilt = [], {}
    for name, nb in raw.items():
        rebuilt[name], repaired = submission.restore_structure(nb, batch.release[name])
        notes += repaired
    work = Path(tempfile.mkdtemp(prefix=f"{re.sub(r'[^A-Za-z0-9_-]', '_', student)[:40]}-", dir=batch.root))
    try:
        settings = {"package_dir": str(batch.package), "memory_bytes": int(batch.memory_gib * 2**30),
                    "max_procs": batch.max_procs, "sandbox": batch.use_sandbox,
                    "grading_seed": grading_seed(batch.secret, assignment, student)}
        stage, db = _stage(course, assignment, student, work, rebuilt, settings)
        report = work / "private" / "evidence.json"
        env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
               "HOME": str(work / "private"), "NBGRADER_SCRUB_OK": str(db), "PYTHONUNBUFFERED": "1",
               "MINIMOE_EVIDENCE_KEY": secrets.token_hex(32), "MINIMOE_EVIDENCE_REPORT": str(report),
               "JUPYTER_PLATFORM_DIRS": "1"}
        log_path = work / "private" / "nbgrader.log"
        status, over = batch.server.run({"stage": str(stage), "assignment": assignment, "student": student,
                                         "env": env, "memory_bytes": int(batch.memory_gib * 2**30) * 2,
                                         "log_path": str(log_path)}, batch.timeout)
        code = 124 if over else status if status >= 0 else 128 - status
        log = log_path.read_text(errors="replace") if log_path.exists() else ""
        if notes:
            log = "grade.py repaired the submission: " + "; ".join(sorted(set(notes))) + "\n" + log
        if batch.log_dir is not None:
            (batch.log_dir / f"{student}.log").write_text(log)
        verdict = work / "private" / "verdict.json"
        evidence = json.loads(report.read_text()) if report.exists() else {}
        if evidence.get("tampering"):
            result.flags = sorted(set(result.flags) | {"tampered with IPython (tests voided)"})
        notebooks = list((stage / "autograded" / student / assignment).glob("*.ipynb"))
        if batch.stopping.is_set():
            result.status, result.reason = "interrupted", "grading was stopped while this submission ran"
        elif verdict.exists():
            result.status, result.reason = "failed", json.loads(verdict.read_text())["killed"] + " (killed)"
        elif code == 124:
            result.status, result.reason = "failed", f"over the {batch.timeout} s budget (killed)"
        elif code > 128:
            result.status, result.reason = "failed", f"the grading process was killed (signal {code - 128})"
        elif "Removing failed assignment" in log or code != 0:
            died = re.search(r"(DeadKernelError|Kernel died[^\n]*|MemoryError)", log)
            result.status = "failed"
            result.reason = (f"nbgrader dropped it (exit {code})" + (f": {died.group(1)}" if died else "; see its log"))
        elif not notebooks or not evidence:
            result.status, result.reason = "failed", "no autograded notebook or evidence report was written"
        else:
            with batch.merge_lock:
                result.score, result.max_score = _merge(course, db, stage, assignment, student,
                                                        result.submission_sha256)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _already_graded(course: Path, assignment: str, student: str) -> Result | None:
    """With --resume: the earlier result if this submission is unchanged since it was graded."""
    state = course / "autograded" / student / assignment / STATE
    if not state.exists():
        return None
    saved = json.loads(state.read_text())
    digest = submission.submission_hash(course / "submitted" / student / assignment)
    if saved.get("submission_sha256") != digest:
        return None
    if stored_scores(course, assignment, [student])[student] != saved.get("score"):
        return None
    return Result(student, status="skipped", reason="unchanged since graded (--resume)", score=saved["score"],
                  max_score=saved["max_score"], submission_sha256=digest)


def sandbox_problem() -> str | None:
    """Why the bubblewrap sandbox cannot be used here, or None when it works."""
    bwrap = sandbox.bwrap_path()
    if bwrap is None:
        return ("bubblewrap (bwrap) is not installed: `sudo apt-get install bubblewrap` (Debian/Ubuntu), or "
                "`make grading-deps` as root")
    probe = subprocess.run(sandbox.sandbox_argv(["/bin/true"], work_dir="/tmp", socket_dir="/tmp",
                                                package_dir="/tmp", env={}, bwrap=bwrap),
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return ("bubblewrap cannot create its namespaces here (" + probe.stderr.strip()[:200] + "); unprivileged "
                "user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1)")
    return None


def grade_class(course: Path, assignment: str, students: list[str] | None = None, *, jobs: int = 1,
                timeout: int = 600, memory_gib: float = 8.0, max_procs: int = 64, log_dir: Path | None = None,
                use_sandbox: bool = True, secret_file: Path | None = None, resume: bool = False,
                progress=print) -> list[Result]:
    course = course.resolve()
    if not (course / "gradebook.db").exists() or not (course / "release" / assignment).is_dir():
        raise SystemExit(f"no release of {assignment!r} in {course}: run `nbgrader generate_assignment "
                         f"{assignment} --force` there first")
    if use_sandbox and (problem := sandbox_problem()):
        raise SystemExit(f"refusing to grade without a sandbox: {problem}.\nStudent code would run as you, with "
                         "your files and network. To grade anyway (not for assessed work), pass --unsafe-no-sandbox.")
    everyone = _students(course, assignment)
    students = everyone if students is None else students
    results = [Result(s, status="missing", reason="no submitted/<student>/<assignment> folder")
               for s in students if s not in everyone]
    todo = [s for s in students if s in everyone]
    if resume:
        done = [r for s in todo if (r := _already_graded(course, assignment, s))]
        results += done
        todo = [s for s in todo if s not in {r.student for r in done}]
        if done:
            progress(f"--resume: {len(done)} unchanged submission(s) skipped")
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    secret = course_secret(secret_file, "minimoe")
    root = Path(tempfile.mkdtemp(prefix=f"minimoe-grade-{assignment}-"))
    graded: list[Result] = []
    previous = {}
    try:
        batch = Batch(course, assignment, timeout=timeout, memory_gib=memory_gib, max_procs=max_procs,
                      use_sandbox=use_sandbox, secret=secret, root=root, log_dir=log_dir)

        def stop(signum, frame):
            if not batch.stopping.is_set():
                progress(f"\n{signal.Signals(signum).name}: stopping; submissions in progress are abandoned, the "
                         "rest is not started")
                batch.stopping.set()
                batch.server.stop()

        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        with batch.server, concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(grade_one, batch, s) for s in todo]
            for future in concurrent.futures.as_completed(futures):
                r = future.result()
                graded.append(r)
                shown = (f"{r.score:g}/{r.max_score:g}" if r.status == "ok"
                         else f"{r.status.upper()}: {r.reason}")
                progress(f"[{len(graded)}/{len(todo)}] {r.student}: {shown} ({r.seconds:.1f} s)"
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
    return [f"{s}: graded {mine[s]:g}, the gradebook holds {stored[s]}" for s in sorted(mine)
            if stored[s] is None or abs(stored[s] - mine[s]) > 1e-9]


def summary(results: list[Result], mismatches: list[str]) -> str:
    bad = [r for r in results if r.status not in ("ok", "skipped")]
    flagged = [r for r in results if r.flags]
    lines = [f"\n{len(results) - len(bad)} of {len(results)} submissions graded; {len(flagged)} flagged for review."]
    if bad:
        lines += ["", "!" * 78,
                  f"{len(bad)} SUBMISSION(S) NOT GRADED — their 0 in `nbgrader export` is NOT a grade:"]
        lines += [f"  {r.student}: {r.status}: {r.reason}" for r in bad]
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
    parser.add_argument("--timeout", type=int, default=600, help="seconds per submission")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="resident memory of a submission's whole sandbox (0: none)")
    parser.add_argument("--max-procs", type=int, default=64, help="processes in a submission's sandbox")
    parser.add_argument("--resume", action="store_true", help="skip students whose submission is unchanged since "
                                                              "it was graded")
    parser.add_argument("--secret-file", type=Path, help="the course's grading secret (default: "
                                                         "~/.config/minimoe/grading-secret-minimoe, created once)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run student code without bubblewrap, as you (never for assessed work)")
    parser.add_argument("--logs", type=Path, help="keep each submission's nbgrader log in this folder")
    parser.add_argument("--report", type=Path, help="write the results as .csv or .json")
    args = parser.parse_args(argv)
    results = grade_class(args.course, args.assignment, args.student, jobs=args.jobs, timeout=args.timeout,
                          memory_gib=args.memory_gb, max_procs=args.max_procs, log_dir=args.logs,
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
    if sys.argv[1:] == ["--fork-server"]:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _serve_forks()
    else:
        sys.exit(main())
