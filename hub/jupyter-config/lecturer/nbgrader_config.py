"""nbgrader in the lecturer's server on the course hub: the course folder (~/minimoe-course, a copy of the
repository's assignments/ made by hub/prepare.py), its exchange, and a collect that never follows links."""

import os
import sys

c = get_config()  # noqa: F821 (provided by traitlets)
COURSE = os.path.expanduser("~/minimoe-course")
load_subconfig(os.path.join(COURSE, "nbgrader_config.py"))  # noqa: F821 (the course's own settings)
c.CourseDirectory.course_id = "minimoe"
c.CourseDirectory.root = COURSE
c.Exchange.root = os.environ["MINIMOE_EXCHANGE"]
sys.path.insert(0, COURSE)
c.ExchangeFactory.collect = "safe_collect.SafeCollect"
