"""nbgrader configuration of the minimoe course (nbgrader 0.9.6). Commands run from this folder; see README.md."""

import os

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.course_id = "minimoe"
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback"]

# The student release: solutions become this stub, hidden-test blocks, if any, are removed (the
# graded checks are in judge/, not in the notebooks).
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"

# Autograding is done by grade.py and its judge (README.md), never by `nbgrader autograde`: the hidden checks live
# in judge/, outside every notebook, and the student's code runs in a sandbox that decides nothing. grade.py writes
# the scores into gradebook.db and the graded notebooks into autograded/, where the commands below find them.

# Feedback: the judge's lines in each test cell, the points from the gradebook.
c.GenerateFeedback.preprocessors = [ClearHiddenTests, GetGrades, CSSHTMLHeaderPreprocessor]
