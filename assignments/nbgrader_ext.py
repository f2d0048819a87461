"""Grader-side defences that nbgrader 0.9.6 lacks, as nbgrader preprocessors (loaded by ``nbgrader_config.py``).

- ``BoundedExecute``: nbgrader's ``Execute`` that stops recording a cell's output after ``max_output_chars``
  characters, while the cell runs. nbgrader's ``LimitOutput`` only trims afterwards, so a flood of output would first
  be held in the grader's memory in full.
- ``ScrubGradebook``: after ``OverwriteCells`` has restored the test cells (hidden tests included) from the
  gradebook, blank the cell sources of this notebook (and of every other assignment) in that gradebook, so the
  student code that runs next cannot read the hidden tests from ``gradebook.db``. Destructive by design: ``grade.py`` enables it only for the throw-away copy of the
  gradebook it grades each student against; it refuses to run unless ``NBGRADER_SCRUB_OK`` names that very file.
- ``ScrubAutogradedInput``: delete the sanitised notebook nbgrader left on disk in the kernel's folder (it holds
  the restored hidden tests) before the first cell runs; also ``grade.py``'s staging copy only.
- ``SanitizeHiddenOutputs``: for feedback, in every cell that holds hidden tests, replace the outputs by one error
  line without traceback, whose message is the failing assertion's own message when that text is written in the
  test cell (test messages name the check, never its inputs), else a generic one. A failing hidden assert's
  traceback would otherwise print the hidden line (and its inputs), and student code called by a hidden test could
  print or raise what it was given.
"""

from __future__ import annotations

import os
import sqlite3

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer, Unicode

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"


class BoundedExecute(Execute):
    """Execute, keeping at most ``max_output_chars`` characters of output per cell (the rest is dropped live)."""

    max_output_chars = Integer(20_000, help="characters of output kept per cell").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._kept_chars: dict[int, int] = {}
        return super().preprocess(nb, resources, km=km)

    def output(self, outs, msg, display_id, cell_index):
        kept = self._kept_chars.get(cell_index, 0)
        size = len(str(msg.get("content", "")))
        if msg["msg_type"] == "error" or kept + size <= self.max_output_chars:
            self._kept_chars[cell_index] = kept + size
            return super().output(outs, msg, display_id, cell_index)
        if kept <= self.max_output_chars:  # first message over the limit: say so once
            outs.append(NotebookNode(output_type="stream", name="stderr",
                                     text=f"\n... output truncated by the grader after {self.max_output_chars} "
                                          "characters ...\n"))
            self._kept_chars[cell_index] = self.max_output_chars + 1
        return None


class ScrubGradebook(NbGraderPreprocessor):
    """Blank the cell sources of a throw-away gradebook once the submission's test cells have been restored."""

    db_path = Unicode("", help="path of the gradebook copy to scrub (must equal $NBGRADER_SCRUB_OK)").tag(config=True)

    def preprocess(self, nb, resources):
        path = os.path.realpath(self.db_path) if self.db_path else ""
        if not path or path != os.path.realpath(os.environ.get("NBGRADER_SCRUB_OK", "/nonexistent")):
            raise RuntimeError("ScrubGradebook only runs on the gradebook copy that grade.py names in "
                               "NBGRADER_SCRUB_OK; refusing to touch " + repr(self.db_path))
        notebook, assignment = resources["nbgrader"]["notebook"], resources["nbgrader"]["assignment"]
        with sqlite3.connect(path) as db:  # this notebook, and every notebook of the other assignments
            db.execute("UPDATE source_cell SET source = '', checksum = '' WHERE notebook_id IN ("
                       "SELECT notebook.id FROM notebook JOIN assignment ON notebook.assignment_id = assignment.id "
                       "WHERE assignment.name != ? OR notebook.name = ?)", (assignment, notebook))
        return nb, resources


class ScrubAutogradedInput(NbGraderPreprocessor):
    """Delete the on-disk copy of the notebook being autograded once it is in memory, before any cell runs.

    nbgrader writes the sanitised notebook (test cells restored, hidden tests included) into the student's
    ``autograded/`` folder, which is the kernel's working directory, then reads it back and executes it: student code
    could read the hidden tests from it. nbgrader writes the executed notebook there afterwards. Only under
    ``grade.py`` (``NBGRADER_SCRUB_OK`` set), where the folder is a throw-away copy.
    """

    def preprocess(self, nb, resources):
        if not os.environ.get("NBGRADER_SCRUB_OK"):
            raise RuntimeError("ScrubAutogradedInput only runs under grade.py's staging copy")
        path = os.path.join(resources["metadata"]["path"], resources["unique_key"] + ".ipynb")
        if os.path.exists(path):
            os.remove(path)
        return nb, resources


class SanitizeHiddenOutputs(NbGraderPreprocessor):
    """In feedback, cells with hidden tests show only whether they passed and, if not, a generic message."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code" or HIDDEN_BEGIN not in cell.source:
            return cell, resources
        errors = [o for o in cell.outputs if o.output_type == "error"]
        outputs = []
        if errors:
            ename, evalue = errors[0].get("ename", "Error"), str(errors[0].get("evalue", ""))
            if not evalue or evalue not in cell.source:  # only the test's own assertion messages are shown
                evalue = (f"{ename} raised while this cell's tests ran; run the visible tests in your notebook to "
                          "see where (details of hidden tests are not shown)")
            outputs.append(NotebookNode(output_type="error", ename=ename, evalue=evalue,
                                        traceback=[f"{ename}: {evalue}"]))
        cell.outputs = outputs
        return cell, resources
