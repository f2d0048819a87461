"""nbgrader in a student's server on the course hub: the course and its exchange (the Assignment List)."""

import os

c = get_config()  # noqa: F821 (provided by traitlets)
c.CourseDirectory.course_id = "minimoe"
c.Exchange.root = os.environ["MINIMOE_EXCHANGE"]
