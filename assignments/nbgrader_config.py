"""nbgrader configuration of the minimoe course (nbgrader 0.9.6). Commands run from this folder; see README.md."""

import os
import sys

from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (
                                    AssignLatePenalties,
                                    CheckCellMetadata,
                                    ClearHiddenTests,
                                    ClearOutput,
                                    DeduplicateIds,
                                    GetGrades,
                                    IgnorePattern,
                                    LimitOutput,
                                    OverwriteCells,
                                    OverwriteKernelspec,
                                    SaveAutoGrades,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nbgrader_ext import BoundedExecute, SanitizeHiddenOutputs

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.course_id = "minimoe"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

# The student release: solutions become this stub, hidden tests are removed.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograding. Every cell gets at most 60 s (an infinite loop costs one minute, then grading goes on); grade.py adds
# a budget per submission. Deleted test cells are put back instead of becoming "needs manual grade".
c.Execute.timeout = 60
c.BoundedExecute.timeout = 60
c.BoundedExecute.max_output_chars = 20_000
c.OverwriteCells.add_missing_cells = True
c.LimitOutput.max_lines = 200
c.LimitOutput.max_traceback = 60
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                      CheckCellMetadata]
c.Autograde.autograde_preprocessors = [BoundedExecute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]

# Feedback: hidden tests are removed from the cells, and their outputs (tracebacks included) reduced to one line.
c.GenerateFeedback.preprocessors = [SanitizeHiddenOutputs, ClearHiddenTests, GetGrades, CSSHTMLHeaderPreprocessor]
