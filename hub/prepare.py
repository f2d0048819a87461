"""Prepare this machine for the course hub (run as root by `make hub`): `python hub/prepare.py [--demo-users]`.

1. installs what the hub needs beside the course's environment: `jupyterhub` (pip, the `hub` extra) and
   `configurable-http-proxy` (npm, into hub/node_modules); when every user cannot run this environment's Python
   (a Python installed under /root, say), it builds a course environment they can run,
   ``MINIMOE_HUB_ENV`` (default /opt/minimoe-hub/venv), from the system's python3, and says so (one built for
   another checkout of the repository is pointed at this one);
2. creates nbgrader's exchange folder (``MINIMOE_EXCHANGE``, default /srv/nbgrader/exchange), writable by everyone
   as nbgrader requires (nbgrader then gives each course's ``inbound`` mode 0733 with the sticky bit: students
   write their submissions there and cannot list or read each other's);
3. gives each lecturer (``MINIMOE_LECTURERS``) a course folder, ``~/minimoe-course``: a copy of the repository's
   ``assignments/`` (sources, judge, grade.py), owned by them and readable by them only (mode 0700); an
   existing one is left as it is;
4. with ``--demo-users``: creates the unix users mm-lecturer, mm-student1 and mm-student2 with new random passwords
   (printed once) and writes ``hub/_state/demo.env`` with the names, so that `make hub` lets them log in.
"""

from __future__ import annotations

import argparse
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

HUB = Path(__file__).resolve().parent
REPO = HUB.parent
COURSE_NAME = "minimoe-course"
NOT_COURSE = ("release", "submitted", "autograded", "feedback", "gradebook.db", "logs", "__pycache__")
DEMO = {"lecturers": ["mm-lecturer"], "students": ["mm-student1", "mm-student2"]}


TORCH_PREFERRED = os.environ.get("TORCH_PREFERRED", "torch==2.13.0")


def reachable_by_everyone(path: Path) -> bool:
    """Whether every user can reach `path` (every folder above it searchable by others) and read it."""
    path = path.resolve()
    if not os.stat(path).st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.parents)


def course_environment() -> Path:
    """The virtual environment the users' servers and kernels run from (its folder), built when needed."""
    here = Path(sys.prefix)
    if reachable_by_everyone(Path(sys.executable)) and reachable_by_everyone(REPO / "minimoe" / "__init__.py"):
        return here
    if not reachable_by_everyone(REPO / "minimoe" / "__init__.py"):
        raise SystemExit(f"{REPO} must be readable by every user of the hub (the course's package lives there)")
    env = Path(os.environ.get("MINIMOE_HUB_ENV", "/opt/minimoe-hub/venv"))
    python, stamp = env / "bin" / "python", env / ".installed"
    if stamp.exists() and stamp.read_text().strip() != str(REPO):  # built for another checkout: point it here
        print(f"{env} holds the course package of {stamp.read_text().strip() or 'another checkout'}: installing "
              f"{REPO}'s instead", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", f"{REPO}[course,hub]"], check=True)
        stamp.write_text(f"{REPO}\n")
    if not stamp.exists():
        system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        if system is None:
            raise SystemExit("no python3 every user can run: install Debian's python3 and python3-venv")
        print(f"{sys.executable} resolves to {Path(sys.executable).resolve()}, which other users cannot run: "
              f"building the course environment for the hub in {env} (a few minutes, once)", flush=True)
        subprocess.run([system, "-m", "venv", str(env)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run(pip + [TORCH_PREFERRED], check=False) if TORCH_PREFERRED else None
        subprocess.run(pip + ["-e", f"{REPO}[course,hub]"], check=True)
        stamp.write_text(f"{REPO}\n")  # which checkout the environment's editable install points at
    return env


def install() -> Path:
    if shutil.which("jupyterhub", path=str(Path(sys.executable).parent)) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", f"{REPO}[hub]"], check=True)
    chp = HUB / "node_modules" / ".bin" / "configurable-http-proxy"
    if not chp.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is needed once to install configurable-http-proxy (apt-get install npm)")
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(HUB),
                        "configurable-http-proxy@5"], check=True)
    return course_environment()


def exchange(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)
    for parent in root.parents:  # every user must reach it
        if parent.stat().st_mode & 0o005 != 0o005:
            raise SystemExit(f"{parent} is not readable and searchable by everyone: the exchange {root} "
                             "must be reachable by every student")


def course_folder(user: str) -> Path:
    entry = pwd.getpwnam(user)
    dest = Path(entry.pw_dir) / COURSE_NAME
    if dest.exists():
        print(f"{dest} exists: left as it is")
        return dest
    shutil.copytree(REPO / "assignments", dest, symlinks=False, ignore=shutil.ignore_patterns(*NOT_COURSE))
    for path in [dest, *dest.rglob("*")]:
        os.lchown(path, entry.pw_uid, entry.pw_gid)
    dest.chmod(0o700)  # solutions and the judge: the lecturer's only (home folders are often readable by all)
    print(f"{dest}: the course folder of {user}")
    return dest


def demo_users(state: Path) -> dict[str, list[str]]:
    for user in DEMO["lecturers"] + DEMO["students"]:
        password = secrets.token_urlsafe(9)
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        print(f"  {user:12s} password {password}")
    (state / "demo.env").write_text(f"MINIMOE_LECTURERS={','.join(DEMO['lecturers'])}\n"
                                    f"MINIMOE_STUDENTS={','.join(DEMO['students'])}\n")
    return DEMO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-users", action="store_true", help="create three demo users (see above)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("the hub logs real unix users in and starts their servers: run this (and the hub) as root")
    state = Path(os.environ.get("MINIMOE_HUB_STATE", HUB / "_state"))
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = install()
    (state / "env.env").write_text(f"MINIMOE_HUB_ENV={env}\n")
    exchange(Path(os.environ.get("MINIMOE_EXCHANGE", "/srv/nbgrader/exchange")))
    lecturers = [n for n in os.environ.get("MINIMOE_LECTURERS", "").split(",") if n]
    if args.demo_users:
        print("demo users (passwords shown once):")
        lecturers = demo_users(state)["lecturers"]
    for user in lecturers:
        course_folder(user)
    return 0


if __name__ == "__main__":
    sys.exit(main())
