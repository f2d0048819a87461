"""The hub's collect (assignments/safe_collect.py) against what a student can drop into the exchange's inbound."""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "assignments"))

STAMP_OLD, STAMP_NEW = "2026-01-01 10:00:00.000000 UTC", "2099-01-01 10:00:00.000000 UTC"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give inbound entries another owner")
def test_collect_takes_real_folders_of_their_owner_and_copies_regular_files_only(tmp_path, monkeypatch):
    from nbgrader.auth import Authenticator
    from nbgrader.coursedir import CourseDirectory

    from safe_collect import SafeCollect

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # nbgrader: alembic
    student = pwd.getpwnam("nobody")
    inbound = tmp_path / "exchange" / "minimoe" / "inbound"
    inbound.mkdir(parents=True)
    secret = tmp_path / "lecturer-only"
    secret.mkdir()
    (secret / "a1_mla.ipynb").write_text("the lecturer's source")

    real = inbound / f"nobody+a1_mla+{STAMP_OLD}+r1"
    real.mkdir()
    (real / "a1_mla.ipynb").write_text("the student's work")
    (real / "timestamp.txt").write_text(STAMP_OLD)
    (real / "stolen.ipynb").symlink_to(secret / "a1_mla.ipynb")
    for path in (real, *real.iterdir()):
        os.lchown(path, student.pw_uid, student.pw_gid)
    newer_link = inbound / f"nobody+a1_mla+{STAMP_NEW}+r2"
    newer_link.symlink_to(secret)
    os.lchown(newer_link, student.pw_uid, student.pw_gid)
    not_theirs = inbound / f"nobody+a1_mla+{STAMP_NEW}+r3"  # owned by root, named as nobody's
    not_theirs.mkdir()
    (not_theirs / "timestamp.txt").write_text(STAMP_NEW)
    (inbound / "nobody+a1_mla+not-a-time+r4").mkdir()  # would stop nbgrader's collect for the whole class

    course = tmp_path / "course"
    course.mkdir()
    coursedir = CourseDirectory(root=str(course))
    coursedir.course_id, coursedir.assignment_id = "minimoe", "a1_mla"
    collect = SafeCollect(coursedir=coursedir, authenticator=Authenticator(), root=str(tmp_path / "exchange"))
    collect.start()

    got = course / "submitted" / "nobody" / "a1_mla"
    assert sorted(p.name for p in got.iterdir()) == ["a1_mla.ipynb", "timestamp.txt"]
    assert (got / "a1_mla.ipynb").read_text() == "the student's work"
    assert (got / "timestamp.txt").read_text() == STAMP_OLD
