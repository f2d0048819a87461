"""What ``grade.py`` does to a submission before nbgrader sees it: read it, rebuild it on the release, flag it.

A student may delete, reorder or duplicate cells, strip their metadata, add a fake grade cell, or paste nbgrader's
markers into their own code; nbgrader would then stop with ``KeyError`` or mark the notebook for manual grading.
:func:`restore_structure` rebuilds every notebook on the released one instead: the release's locked cells
(instructions and tests) in the release's order, each answer cell taken from the student by its ``grade_id`` (or,
when the metadata was stripped, by its cell id), and the student's own extra cells kept after the cell they followed.
"""

from __future__ import annotations

import copy
import hashlib
import re
import uuid
from pathlib import Path

import nbformat

# Patterns in a submission's own cells that deserve a human look (they do not change the score by themselves;
# tampering with the execution machinery is voided by the evidence check, see nbgrader_ext.py).
SUSPICIOUS = {
    "kills the kernel": r"os\._exit|os\.kill|signal\.",
    "exits": r"sys\.exit|\bexit\(|\bquit\(",
    "patches the interpreter": r"sys\.setprofile|sys\.settrace|sys\.modules|builtins|__import__|importlib",
    "patches IPython": r"set_custom_exc|run_cell|showtraceback|excepthook|ast_transformers|input_transformers"
                       r"|events\.register|get_ipython\(\)\.\w+\s*=",
    "inspects frames or sources": r"_getframe|inspect\.|f_locals|f_back|getsource",
    "reads grader files": r"gradebook|source/|nbgrader|HIDDEN TESTS|\.ipynb|/proc\b|minimoe-evidence",
    "runs processes": r"subprocess|os\.system|os\.popen|multiprocessing|threading|os\.fork|socket",
    "reassigns library functions": r"^\s*(torch|math|np|numpy)\.[\w.]+\s*=[^=]",
    "imports a reference module": r"minimoe\.(attention\.(rope|mla)|moe\.(gate|balance)|rl)\b",
}
_MARKERS = re.compile(r"(BEGIN|END) (HIDDEN TESTS|SOLUTION)")


class UnreadableSubmission(ValueError):
    """A submitted notebook that cannot be read; the message says what to fix."""


def submission_hash(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file of a submission folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read_notebook(path: Path) -> nbformat.NotebookNode:
    if not path.exists():
        raise UnreadableSubmission(f"{path.name} is missing from the submission: submit the notebook you were "
                                   "given, under its original name")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 (json, nbformat validation, encoding: all mean the same to a student)
        raise UnreadableSubmission(f"{path.name} is not a readable notebook ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:200]}); open your last good version in "
                                   "JupyterLab, save it, and submit again") from None


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
        new.source = _MARKERS.sub(lambda m: f"{m.group(1)}-{m.group(2).replace(' ', '-')}", cell.get("source", ""))
        if new.source != cell.get("source", ""):
            notes.append("nbgrader markers in the student's own code were neutralised")
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


def flags_for(notebooks: list[nbformat.NotebookNode], release: list[nbformat.NotebookNode]) -> list[str]:
    """Names of the :data:`SUSPICIOUS` patterns found in the student's own code (not in released cells)."""
    locked = {c.source for nb in release for c in nb.cells if _meta(c).get("locked")}
    own = "\n".join(c.get("source", "") for nb in notebooks for c in nb.cells
                    if c.get("cell_type") == "code" and c.get("source", "") not in locked)
    return sorted(name for name, pattern in SUSPICIOUS.items() if re.search(pattern, own, re.MULTILINE))
