"""nbgrader's ``collect`` for a course hub, made safe against what students can put in the exchange.

The exchange's ``inbound`` folder is writable by every student (nbgrader 0.9.6: mode 0733 with the sticky bit), and
nbgrader's own ``ExchangeCollect`` copies each ``<student>+<assignment>+<timestamp>+<random>`` entry with
``shutil.copytree``, which follows symbolic links, and only *warns* when an entry is not owned by the student it
names. A student could then drop a link to the lecturer's source notebook, the grading secret or another student's
submission and have ``collect`` copy its target into ``submitted/`` (and from there into their feedback), or submit
in another student's name. :class:`SafeCollect` collects an entry only when it is a real folder (not a link) owned
by the student it names, and copies regular files only, never following a link (``submission.stage``, the same
copy ``grade.py`` stages with); everything it skips is logged with the reason.

Enabled by the hub's lecturer config (``c.ExchangeFactory.collect = "safe_collect.SafeCollect"``).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from nbgrader.exchange.default.collect import ExchangeCollect

import submission


class SafeCollect(ExchangeCollect):
    def _path_to_record(self, path):
        """nbgrader's record of an inbound entry, or None (logged) when the entry must not be collected: a link,
        not a folder, not owned by the student it names, or a name whose timestamp does not parse (which would
        stop nbgrader's collect for the whole class)."""
        name = os.path.basename(path)
        try:
            record = super()._path_to_record(path)
        except Exception:  # noqa: BLE001 (nbgrader raises several kinds for a malformed name)
            self.log.error("not collected: %s: not a submission's name", name)
            return None
        problem = entry_problem(path, record["username"])
        if problem:
            self.log.error("not collected: %s: %s", name, problem)
            return None
        return record

    def init_src(self):
        """nbgrader 0.9.6's, with the refused entries left out *before* each student's latest is chosen (a link
        dropped with a later timestamp must not hide the student's real submission)."""
        import glob as glob_module

        real_glob = glob_module.glob

        def entries(pattern):
            return [p for p in real_glob(pattern) if self._path_to_record(p) is not None]

        glob_module.glob = entries
        try:
            super().init_src()
        finally:
            glob_module.glob = real_glob

    def do_copy(self, src, dest, log=None):
        dropped = submission.stage(Path(src), Path(dest))
        for reason in dropped:
            self.log.warning("collect %s: %s", os.path.basename(src), reason)


def entry_problem(path: str, student: str) -> str | None:
    """Why an inbound entry must not be collected (None: collect it)."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link, not a submission"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    if owner != student:
        return f"names {student!r} but belongs to {owner!r}"
    return None
