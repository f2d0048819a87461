"""Grader-side defences that nbgrader 0.9.6 lacks, as nbgrader preprocessors (loaded by ``nbgrader_config.py``).

- ``BoundedExecute``: nbgrader's ``Execute`` that stops recording a cell's output after ``max_output_chars``
  characters, while the cell runs. nbgrader's ``LimitOutput`` only trims afterwards, so a flood of output would first
  be held in the grader's memory in full.
- ``ScrubAutogradedInput``: delete the sanitised notebook nbgrader left on disk in the kernel's folder (it holds
  the restored hidden tests) before the first cell runs; also ``grade.py``'s staging copy only.
- ``SanitizeHiddenOutputs``: for feedback, in every cell that holds hidden tests, replace the outputs by one error
  line without traceback, whose message is the failing assertion's own message when that text is written in the
  test cell (test messages name the check, never its inputs), else a generic one. A failing hidden assert's
  traceback would otherwise print the hidden line (and its inputs), and student code called by a hidden test could
  print or raise what it was given.
- ``InjectEvidence`` / ``VerifyEvidence``: a test cell earns its points only on positive evidence that its code ran
  to its end. Before execution every test cell gets an epilogue that checks IPython's execution machinery is
  untouched and then publishes a per-run, per-cell token (an HMAC of a key only the grading process holds); after
  execution a cell without its token gets an error (0 points), a cell whose epilogue found tampering gets an error,
  and a final check after the last cell voids every test if the machinery was modified anywhere. The epilogue and
  the tokens are removed again before the notebook is saved, so feedback shows the cells as released.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re

from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

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
        if msg["msg_type"] == "error" or EVIDENCE_MIME in msg.get("content", {}).get("data", {}) \
                or kept + size <= self.max_output_chars:
            self._kept_chars[cell_index] = kept + size
            return super().output(outs, msg, display_id, cell_index)
        if kept <= self.max_output_chars:  # first message over the limit: say so once
            outs.append(NotebookNode(output_type="stream", name="stderr",
                                     text=f"\n... output truncated by the grader after {self.max_output_chars} "
                                          "characters ...\n"))
            self._kept_chars[cell_index] = self.max_output_chars + 1
        return None


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


# The only messages of a hidden test a student sees: the function and the kind of check, never inputs or code.
HIDDEN_KINDS = ("raised an exception", "wrong type", "wrong dtype", "wrong shape", "wrong value on unseen inputs",
                "wrong value on an edge case", "called minimoe's reference", "did not train", "modified its inputs")
HIDDEN_MESSAGE = re.compile(r"\[hidden\] [A-Za-z_][A-Za-z0-9_.]*: (" + "|".join(map(re.escape, HIDDEN_KINDS)) + r")")


class SanitizeHiddenOutputs(NbGraderPreprocessor):
    """In feedback, cells with hidden tests show only whether they passed and, if not, what kind of check failed."""

    def preprocess_cell(self, cell, resources, cell_index):
        if cell.cell_type != "code" or HIDDEN_BEGIN not in cell.source:
            return cell, resources
        errors = [o for o in cell.outputs if o.output_type == "error"]
        outputs = []
        if errors:
            ename, evalue = errors[0].get("ename", "Error"), str(errors[0].get("evalue", ""))
            if ename == GRADING_ERROR:
                pass  # the grader's own verdict (no evidence, tampering) names no hidden detail
            elif HIDDEN_MESSAGE.fullmatch(evalue.strip()) or (evalue and evalue in cell.source.split(HIDDEN_BEGIN)[0]):
                evalue = evalue.strip()  # a hidden check's own verdict, or a visible test's literal message
            else:
                evalue = (f"{ename} raised by a visible test or before the hidden checks of this cell; run the "
                          "visible tests in your notebook to see where (details of hidden tests are not shown)")
            outputs.append(NotebookNode(output_type="error", ename=ename, evalue=evalue,
                                        traceback=[f"{ename}: {evalue}"]))
        cell.outputs = outputs
        return cell, resources


# --- Evidence of a pass ---------------------------------------------------------------------------------------
EVIDENCE_MIME = "application/vnd.minimoe.evidence+json"
GRADING_ERROR = "GradingError"
EPILOGUE_BEGIN = "\n# ---- added by the grader at grading time (removed afterwards) ----\n"

# Runs in the kernel at the end of every test cell and after the last cell: lists what was changed in IPython's
# execution machinery (what a forged pass needs), then publishes the token or the list of problems.
CHECK = r'''
def _minimoe_evidence(token):
    import builtins, sys, types
    ip = get_ipython()
    problems = []
    roots = tuple(p for p in {sys.prefix, sys.base_prefix} if p)
    def library(f):
        f = getattr(f, "__func__", f)
        code = getattr(f, "__code__", None)
        if code is None:
            return type(f) is types.BuiltinFunctionType or type(f).__module__.split(".")[0] in ("IPython", "ipykernel")
        return code.co_filename.startswith(roots)
    if ip.custom_exceptions:
        problems.append("a custom exception handler is set")
    for name in ("run_cell", "run_cell_async", "_run_cell", "run_ast_nodes", "run_code", "showtraceback",
                 "_showtraceback", "showsyntaxerror", "showindentationerror", "transform_cell", "transform_ast",
                 "should_run_async", "get_exception_only", "excepthook", "set_custom_exc"):
        if not library(vars(ip).get(name, getattr(type(ip), name, None))):
            problems.append("IPython's " + name + " was replaced")
    for name in ("do_execute", "execute_request", "_publish_execute_input", "_publish_status"):
        if not library(vars(ip.kernel).get(name, getattr(type(ip.kernel), name, None))):
            problems.append("the kernel's " + name + " was replaced")
    if not all(library(h) for h in ip.kernel.shell_handlers.values()):
        problems.append("a kernel message handler was replaced")
    for name in ("InteractiveTB", "SyntaxTB", "displayhook", "display_pub", "input_transformer_manager"):
        if type(getattr(ip, name, None)).__module__.split(".")[0] not in ("IPython", "ipykernel"):
            problems.append("IPython's " + name + " was replaced")
    if ip.ast_transformers or ip.input_transformers_post or not all(map(library, ip.input_transformers_cleanup)):
        problems.append("an input or AST transformer was added")
    if not all(library(f) for fs in ip.events.callbacks.values() for f in fs):
        problems.append("an IPython event callback was registered")
    if not library(sys.excepthook) or sys.gettrace() is not None or sys.getprofile() is not None:
        problems.append("sys.excepthook, a trace or a profile function was changed")
    for name in ("print", "exec", "eval", "compile", "isinstance", "issubclass", "getattr", "setattr", "hasattr",
                 "len", "repr", "__import__", "callable", "iter", "next", "all", "any", "abs", "min", "max", "sum"):
        f = getattr(builtins, name, None)
        if type(f) is not types.BuiltinFunctionType or f.__self__ is not builtins or f.__name__ != name:
            problems.append("builtins." + name + " was replaced")
    for name in ("type", "object", "int", "float", "bool", "str", "tuple", "list", "dict", "BaseException",
                 "Exception", "AssertionError", "TypeError", "ValueError", "NameError", "AttributeError",
                 "RuntimeError", "KeyError", "IndexError", "StopIteration", "NotImplementedError"):
        t = getattr(builtins, name, None)
        if not isinstance(t, type) or t.__flags__ & (1 << 9) or t.__name__ != name:  # 1 << 9: a heap (user) type
            problems.append("builtins." + name + " was replaced")
    from IPython.display import publish_display_data
    publish_display_data({"application/vnd.minimoe.evidence+json": {"token": token, "problems": problems}})
'''


def _token(key: str, cell_key: str) -> str:
    return hmac.new(key.encode(), cell_key.encode(), hashlib.sha256).hexdigest()[:32]


def _is_test_cell(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and meta.get("grade", False) and not meta.get("solution", False)


class InjectEvidence(NbGraderPreprocessor):
    """Give every test cell the evidence epilogue, and append the final check cell (``grade.py`` only).

    The key comes from ``MINIMOE_EVIDENCE_KEY`` in the grading process's environment; the sandboxed kernel's
    environment does not hold it."""

    def preprocess(self, nb, resources):
        key = os.environ.get("MINIMOE_EVIDENCE_KEY")
        if not key:
            raise RuntimeError("InjectEvidence runs only under grade.py (MINIMOE_EVIDENCE_KEY is not set)")
        for cell in nb.cells:
            if _is_test_cell(cell):
                grade_id = cell.metadata["nbgrader"]["grade_id"]
                cell.metadata.setdefault("minimoe", {})["original_source"] = cell.source
                cell.source = (cell.source + EPILOGUE_BEGIN + CHECK
                               + f"_minimoe_evidence({_token(key, grade_id)!r}); del _minimoe_evidence\n")
        final = NotebookNode(cell_type="code", source=CHECK + f"_minimoe_evidence({_token(key, '@final')!r})\n",
                             metadata={"minimoe": {"final_check": True}}, outputs=[], execution_count=None)
        nb.cells.append(final)
        return nb, resources


def _evidence(cell) -> list[dict]:
    return [o.data[EVIDENCE_MIME] for o in cell.get("outputs", [])
            if o.get("output_type") == "display_data" and EVIDENCE_MIME in o.get("data", {})]


def _grading_error(message: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=GRADING_ERROR, evalue=message,
                        traceback=[f"{GRADING_ERROR}: {message}"])


class VerifyEvidence(NbGraderPreprocessor):
    """After execution: a test cell passes only with its own token, no error, and untouched machinery.

    Writes what it found to ``MINIMOE_EVIDENCE_REPORT`` (a file outside the sandbox) for ``grade.py``, restores the
    test cells' sources, removes the evidence outputs and the final check cell."""

    def preprocess(self, nb, resources):
        key = os.environ["MINIMOE_EVIDENCE_KEY"]
        finals = [c for c in nb.cells if c.metadata.get("minimoe", {}).get("final_check")]
        final = [e for c in finals for e in _evidence(c) if e.get("token") == _token(key, "@final")]
        problems = sorted({p for e in final for p in e.get("problems", [])})
        if not final:
            problems.append("the final check of the grader did not run")
        nb.cells = [c for c in nb.cells if c not in finals]
        report = {"tampering": problems, "cells": {}}
        for cell in nb.cells:
            if not _is_test_cell(cell):
                continue
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            mine = [e for e in _evidence(cell) if e.get("token") == _token(key, grade_id)]
            errors = [o for o in cell.outputs if o.output_type == "error"]
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "display_data"
                                                            and EVIDENCE_MIME in o.get("data", {}))]
            tampering = sorted(set(problems) | {p for e in mine for p in e.get("problems", [])})
            if tampering:
                verdict = "tampered"
                cell.outputs.append(_grading_error("the grader found IPython's execution machinery modified, so "
                                                   "no test earns points: " + "; ".join(tampering)))
            elif errors:
                verdict = "failed"
            elif not mine:
                verdict = "no evidence"
                cell.outputs.append(_grading_error("this test cell did not run to its end, so it earns no points "
                                                   "(an error was raised and hidden, or the cell was cut short)"))
            else:
                verdict = "passed"  # warnings on stderr do not cost the points of a test that ran to its end
                for o in cell.outputs:
                    if o.output_type == "stream" and o.name == "stderr":
                        o.name = "stdout"
            report["cells"][grade_id] = verdict
            cell.source = cell.metadata.get("minimoe", {}).pop("original_source", cell.source)
            if not cell.metadata.get("minimoe"):
                cell.metadata.pop("minimoe", None)
        path = os.environ.get("MINIMOE_EVIDENCE_REPORT")
        if path:
            with open(path, "w") as f:
                json.dump(report, f)
        return nb, resources
