"""What ``grade.py`` does to a submission before anything runs: stage its files, read it, rebuild it on the release.

:func:`stage` copies regular files only, never following a link. :func:`read_notebook` checks a notebook's size
and cell count before parsing it. A student may delete, reorder or duplicate cells, strip their metadata, add a
fake grade cell; :func:`restore_structure` rebuilds every notebook on the released one instead: the release's
locked cells (instructions and tests) in the release's order, each answer cell taken from the student by its
``grade_id`` (or, when the metadata was stripped, by its cell id), and the student's own extra cells kept after the
cell they followed. Text such as nbgrader's ``### BEGIN SOLUTION`` markers in a student's cell is kept as written:
no step after grading interprets it (``grade.py`` writes the scores and the autograded notebook itself, and
``nbgrader generate_feedback`` only renders them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
import uuid
from pathlib import Path

import nbformat


class UnreadableSubmission(ValueError):
    """A submitted notebook that cannot be read; the message says what to fix."""


MAX_FILE_BYTES = 8 << 20  # any one file of a submission
MAX_TOTAL_BYTES = 32 << 20  # all of them
MAX_FILES = 200
MAX_NOTEBOOK_BYTES = 4 << 20  # checked before the notebook is parsed
MAX_CELLS = 2_000  # checked on the JSON, before nbformat validates it


def stage(folder: Path, dest: Path) -> list[str]:
    """Copy the regular files of a submission folder into `dest`, never following a link; returns what was dropped
    and why. Symbolic links, hard links (a second name for a file elsewhere), devices, FIFOs, sockets, oversized
    files and anything beyond the count or total limits are dropped; the source is opened with ``O_NOFOLLOW`` and
    checked again on the open descriptor, so a link swapped in after the listing is refused too."""
    dropped, total, count = [], 0, 0
    dest.mkdir(parents=True, exist_ok=True)

    def walk(src: Path, out: Path, depth: int) -> None:
        nonlocal total, count
        for entry in sorted(os.scandir(src), key=lambda e: e.name):
            rel = os.path.relpath(entry.path, folder)
            st = os.lstat(entry.path)
            if stat.S_ISLNK(st.st_mode):
                dropped.append(f"{rel}: a symbolic link (dropped)")
            elif stat.S_ISDIR(st.st_mode):
                if depth >= 4:
                    dropped.append(f"{rel}: folders nested too deep (dropped)")
                else:
                    (out / entry.name).mkdir()
                    walk(Path(entry.path), out / entry.name, depth + 1)
            elif not stat.S_ISREG(st.st_mode):
                dropped.append(f"{rel}: not a regular file (a device, FIFO or socket; dropped)")
            elif st.st_nlink > 1:
                dropped.append(f"{rel}: a hard link to another file (dropped)")
            elif st.st_size > MAX_FILE_BYTES or total + st.st_size > MAX_TOTAL_BYTES or count >= MAX_FILES:
                dropped.append(f"{rel}: over the size or file-count limit of a submission (dropped)")
            else:
                try:
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError as err:
                    dropped.append(f"{rel}: could not be opened ({err.strerror}; dropped)")
                    continue
                with os.fdopen(fd, "rb") as f:
                    now = os.fstat(f.fileno())
                    if not stat.S_ISREG(now.st_mode) or now.st_nlink > 1 or (now.st_dev, now.st_ino) != (
                            st.st_dev, st.st_ino):
                        dropped.append(f"{rel}: changed while it was copied (dropped)")
                        continue
                    data = f.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    dropped.append(f"{rel}: over the size limit of a submission (dropped)")
                    continue
                total, count = total + len(data), count + 1
                fd = os.open(out / entry.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)

    walk(folder, dest, 0)
    return dropped


def submission_hash(folder: Path) -> str:
    """sha256 over the relative paths and bytes of the regular files of a (staged) submission folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A staged notebook, refused (with what to fix) when missing, too large, with too many cells, or unreadable."""
    if not path.is_file() or path.is_symlink():
        raise UnreadableSubmission(f"{path.name} is missing from the submission (or was not a regular file): "
                                   "submit the notebook you were given, under its original name")
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        raise UnreadableSubmission(f"{path.name} is {size / 2**20:.1f} MiB, over the limit of "
                                   f"{MAX_NOTEBOOK_BYTES / 2**20:g} MiB: clear its outputs (Edit > Clear Outputs of "
                                   "All Cells), save and submit again")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise UnreadableSubmission(f"{path.name} is not a readable notebook (not valid JSON); open your last good "
                                   "version in JupyterLab, save it, and submit again") from None
    cells = data.get("cells") if isinstance(data, dict) else None
    if isinstance(cells, list) and len(cells) > MAX_CELLS:
        raise UnreadableSubmission(f"{path.name} has {len(cells)} cells, over the limit of {MAX_CELLS}: delete the "
                                   "empty cells and submit again")
    try:
        return nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # noqa: BLE001 (nbformat validation, versions: all mean the same to a student)
        raise UnreadableSubmission(f"{path.name} is not a readable notebook ({type(err).__name__}); open your last "
                                   "good version in JupyterLab, save it, and submit again") from None


def _meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _is_answer(cell) -> bool:
    return bool(_meta(cell).get("solution")) and not _meta(cell).get("locked")


def restore_structure(student: nbformat.NotebookNode, release: nbformat.NotebookNode) -> tuple[
        nbformat.NotebookNode, list[str]]:
    """The student's notebook rebuilt on the release; also returns notes on what was repaired (for the log)."""
    notes: list[str] = []
    by_grade_id = {_meta(c).get("grade_id"): i for i, c in enumerate(release.cells) if _meta(c).get("grade_id")}
    by_cell_id = {c.get("id"): i for i, c in enumerate(release.cells) if c.get("id")}
    answers: dict[int, nbformat.NotebookNode] = {}
    extras: dict[int, list] = {}
    anchor = -1
    for cell in student.cells:
        index = by_grade_id.get(_meta(cell).get("grade_id"))
        if index is None and not _meta(cell):
            index = by_cell_id.get(cell.get("id"))
        if index is not None and release.cells[index].cell_type == cell.get("cell_type"):
            anchor = index
            if _is_answer(release.cells[index]) and index not in answers:
                answers[index] = cell
            continue  # a released locked cell (instructions, tests) comes from the release, not the student
        if _meta(cell):
            notes.append(f"cell with unknown nbgrader metadata {_meta(cell).get('grade_id')!r} kept as plain cell")
        extras.setdefault(anchor, []).append(cell)
    cells = []
    used_ids = set()

    def own(cell, meta=None):
        new = nbformat.v4.new_code_cell() if cell.get("cell_type") == "code" else nbformat.v4.new_markdown_cell()
        new.source = cell.get("source", "")
        if meta is not None:
            new.metadata["nbgrader"] = copy.deepcopy(meta)
        cid = cell.get("id")
        new.id = cid if isinstance(cid, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", cid) and cid not in used_ids \
            else uuid.uuid4().hex[:12]
        used_ids.add(new.id)
        return new

    for cell in extras.get(-1, []):
        cells.append(own(cell))
    for i, released in enumerate(release.cells):
        if i in answers:
            cells.append(own(answers[i], _meta(released)))
            cells[-1].id = released.get("id", cells[-1].id)
        else:
            if _is_answer(released):
                notes.append(f"answer cell {_meta(released).get('grade_id')!r} missing: the released stub is used")
            cells.append(copy.deepcopy(released))
        used_ids.add(cells[-1].get("id"))
        for cell in extras.get(i, []):
            cells.append(own(cell))
    rebuilt = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(release.metadata))
    for cell in rebuilt.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return rebuilt, notes
