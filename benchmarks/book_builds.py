"""Consecutive clean builds of the book: does any chapter's execution time jump (a stalled cell)?

A stall is a cell that waits out its whole timeout although the kernel has answered (see
``minimoe/_kernel_client.py``); in a build it shows as one chapter taking far longer than it usually does. This
script runs ``book/build.py`` N times in a row, each time on a fresh copy of the book and the chapters with no
execution cache, so every chapter executes every time, and prints each chapter's execution seconds per build (from
the jupyter-cache records the build writes), its median, and the worst build over that median. It fails (exit 1)
when a chapter took more than ``--limit`` (2) times its median in some build, or a build failed.

The copies live in a temporary folder that is removed at the end; the repository's own ``book/_build`` is not
touched. The vendored scripts (``book/_vendor``) are copied in when present, so no build fetches them again.
With ``--rev REV`` the book and chapters come from that commit (``git archive``) instead of the working tree.

Run: ``python benchmarks/book_builds.py`` (5 builds: about an hour on 2 cores), ``--runs 2`` for a shorter look.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("book", "notebooks")
NOT_COPIED = {"book": ("_build", "chapters")}  # build output, and the link to the chapters that build.py makes


def ignored(top: str):
    """A copytree `ignore` that leaves out NOT_COPIED[top] at the top of the copy only (the catalogs have a
    `chapters/` folder of their own), and caches anywhere."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in ("__pycache__", ".ipynb_checkpoints")}
        if Path(folder) == REPO / top:
            skip |= set(names) & set(NOT_COPIED.get(top, ()))
        return skip
    return ignore


def fresh_copy(into: Path, rev: str | None) -> Path:
    """The book and its chapters in `into`, without any build output; returns the book folder."""
    if rev is None:
        for name in COPIED:
            shutil.copytree(REPO / name, into / name, symlinks=True, ignore=ignored(name))
    else:
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev, *COPIED], check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(into, filter="data")
        vendor = REPO / "book" / "_vendor"
        if vendor.exists():
            shutil.copytree(vendor, into / "book" / "_vendor")
    for name in ("pyproject.toml", "LICENSE"):  # the notebook archive reads the version and the licence
        if (REPO / name).exists():
            shutil.copy(REPO / name, into / name)
    return into / "book"


def one_build(book: Path, flags: list[str], log: Path) -> tuple[int, float, dict[str, float | None]]:
    """Run the build; (exit status, wall seconds, chapter -> execution seconds in this build)."""
    sys.path.insert(0, str(REPO / "book"))
    from build import chapter_timings

    since = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    start = time.monotonic()
    with open(log, "w") as out:
        status = subprocess.run([sys.executable, str(book / "build.py"), "--book", str(book), *flags],
                                cwd=book.parent, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - start
    times = {name: (seconds if state == "executed" else None)
             for name, seconds, state in chapter_timings(book, since, set())}
    return status, wall, times


def report(builds: list[tuple[int, float, dict[str, float | None]]], limit: float) -> list[str]:
    """Print the table; return the problems (a chapter over `limit` x its median, a failed build)."""
    chapters = sorted({name for _, _, times in builds for name in times})
    width = max(len(c) for c in chapters)
    head = "  ".join(f"{f'build {i + 1}':>8}" for i in range(len(builds)))
    print(f"\n{'chapter':<{width}}  {head}  {'median':>8}  {'worst/median':>12}")
    problems = []
    for chapter in chapters:
        seconds = [times.get(chapter) for _, _, times in builds]
        shown = "  ".join(f"{s:7.1f}s" if s is not None else f"{'-':>8}" for s in seconds)
        measured = [s for s in seconds if s is not None]
        if not measured:
            print(f"{chapter:<{width}}  {shown}")
            problems.append(f"{chapter}: not executed in any build")
            continue
        median = statistics.median(measured)
        worst = max(measured) / median
        print(f"{chapter:<{width}}  {shown}  {median:7.1f}s  {worst:11.2f}x")
        if worst > limit:
            problems.append(f"{chapter}: {max(measured):.1f} s in one build, {worst:.2f}x its median {median:.1f} s")
        if len(measured) < len(builds):
            problems.append(f"{chapter}: executed in {len(measured)} of {len(builds)} builds")
    walls = "  ".join(f"{wall:7.0f}s" for _, wall, _ in builds)
    print(f"{'build wall time':<{width}}  {walls}")
    for i, (status, _, _) in enumerate(builds):
        if status != 0:
            problems.append(f"build {i + 1} failed (exit {status})")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="consecutive clean builds (default 5)")
    parser.add_argument("--limit", type=float, default=2.0, help="largest allowed time / median per chapter")
    parser.add_argument("--rev", help="build the book of this commit (default: the working tree)")
    parser.add_argument("--allow-untranslated", action="store_true",
                        help="build the 繁體中文 edition even where a message is untranslated (as book/build.py)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, not {args.runs}")
    flags = ["--allow-untranslated"] if args.allow_untranslated else []
    builds = []
    with tempfile.TemporaryDirectory(prefix="minimoe-book-builds-") as tmp:
        for run in range(args.runs):
            work = Path(tmp) / f"build-{run + 1}"
            work.mkdir()
            book = fresh_copy(work, args.rev)
            log = Path(tmp) / f"build-{run + 1}.log"
            print(f"build {run + 1} of {args.runs} ...", flush=True)
            status, wall, times = one_build(book, flags, log)
            executed = sum(s for s in times.values() if s is not None)
            print(f"  exit {status}, {wall:.0f} s wall, {executed:.0f} s executing chapters", flush=True)
            if status != 0:
                print(log.read_text()[-3000:], file=sys.stderr)
            builds.append((status, wall, times))
            shutil.rmtree(work)
    problems = report(builds, args.limit)
    if problems:
        print("\n" + "\n".join(problems), file=sys.stderr)
        return 1
    print(f"\n{args.runs} clean builds; no chapter took more than {args.limit:g}x its median time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
