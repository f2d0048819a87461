"""The bubblewrap sandbox the student's code runs in, its caps, and the package copy it imports.

Only the student's side runs here (``judge/server.py``: the notebook's code, then the function calls the judge
makes); the judge, the grading secret, the course and the gradebook stay outside. Inside ``bwrap``:

- every namespace is unshared (user, PID, network, IPC, UTS, cgroup): no network, not even the host's loopback;
  its own PID space; ``--die-with-parent``; ``--new-session``; ``--cap-drop ALL``; uid 1000;
- read-only: ``/usr``, a few files of ``/etc``, the Python installation and virtual environment (by their real
  paths, so a symlinked ``.venv`` works), ``server.py`` and ``wire.py`` (not the rest of ``judge/``, which holds
  the hidden checks), the job file, the staged submission and a copy of ``minimoe`` in which the reference
  implementations of the lab being graded raise "not available while grading" (:func:`copy_package`);
- writable: only size-capped tmpfs mounts, ``/home/student`` (the working folder, the submission's files copied
  in), ``/tmp`` and ``/dev/shm``; they vanish with the sandbox, and the grader never reads them;
- the data channel is a pair of pipes; stdout and stderr go to the lecturer's log through a byte cap.

Caps over the whole process tree, enforced by a watchdog thread outside the sandbox (no writable cgroup v2 on these
machines): resident memory plus the tmpfs sizes (tmpfs pages show in no process's RSS, so their caps are set aside
from the memory budget), the number of processes, and CPU time (user + system of every process in the tree, the
children it reaped included). Over a cap the whole sandbox is killed and the reason recorded by the driver.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

_ETC = ["/etc/ld.so.cache", "/etc/fonts", "/etc/localtime", "/etc/passwd", "/etc/group"]
HOME = "/home/student"


@dataclass
class Limits:
    """What one submission's sandbox may use."""

    memory_bytes: int = 8 << 30  # resident memory of the tree plus every tmpfs
    max_procs: int = 64
    cpu_seconds: float = 300.0  # user + system CPU time over the whole tree, all calls together
    work_bytes: int = 256 << 20  # tmpfs of the working folder
    tmp_bytes: int = 256 << 20  # tmpfs of /tmp
    shm_bytes: int = 64 << 20  # tmpfs of /dev/shm
    log_bytes: int = 200_000  # stdout + stderr kept for the lecturer's log

    def __post_init__(self) -> None:
        if self.memory_bytes > 0:  # the tmpfs mounts come out of the memory budget
            share = self.memory_bytes // 8
            self.work_bytes, self.tmp_bytes = min(self.work_bytes, share), min(self.tmp_bytes, share)
            self.shm_bytes = min(self.shm_bytes, share // 2)

    @property
    def resident_bytes(self) -> int:
        return self.memory_bytes - self.work_bytes - self.tmp_bytes - self.shm_bytes if self.memory_bytes else 0


# Installed beside the course (its tests compare with them) and holding reference implementations of what the labs
# ask for (transformers' DeepseekV3Attention and MoE, TRL's GRPO loss, peft's LoRA): hidden from the sandbox.
HIDDEN_PACKAGES = ("transformers", "trl", "peft")


def hidden_package_dirs() -> list[str]:
    import importlib.util
    dirs = []
    for name in HIDDEN_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs += [os.path.realpath(d) for d in spec.submodule_search_locations]
    return dirs


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def python_paths() -> tuple[str, list[str]]:
    """The interpreter to run inside (the venv's ``bin/python`` under the venv's real path) and folders to bind."""
    prefix = os.path.realpath(sys.prefix)
    executable = os.path.join(prefix, "bin", os.path.basename(sys.executable))
    if not os.path.exists(executable):
        executable = os.path.realpath(sys.executable)
    dirs = {prefix, os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(os.path.realpath(executable)))}
    return executable, sorted(d for d in dirs if not d.startswith("/usr/") and d != "/usr")


def sandbox_argv(cmd: list[str], *, ro_binds: list[tuple[str, str]], env: dict[str, str], limits: Limits,
                 bwrap: str = "bwrap") -> list[str]:
    """The ``bwrap`` command line that runs `cmd` in the sandbox of this module's docstring."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", "1000", "--gid", "1000", "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.tmp_bytes), "--tmpfs", "/tmp",
            "--size", str(limits.shm_bytes), "--tmpfs", "/dev/shm",
            "--size", str(limits.work_bytes), "--tmpfs", HOME]
    for top in ("bin", "lib", "lib64", "sbin"):  # merged-/usr systems link these into /usr
        path = Path("/" + top)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for path in _ETC:
        argv += ["--ro-bind-try", path, path]
    for src, dest in ro_binds:
        argv += ["--ro-bind", src, dest]
    for path in hidden_package_dirs():  # an empty folder over each: nothing to import
        argv += ["--size", "4096", "--tmpfs", path]
    argv += ["--clearenv", "--chdir", HOME]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv + ["--", *cmd]


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (a PID namespace's processes stay descendants of its bwrap)."""
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _usage(pids: list[int]) -> tuple[int, float]:
    """(resident bytes, CPU seconds incl. reaped children) of `pids`."""
    page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    rss, ticks = 0, 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            rss += int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            pass
    return rss, ticks / tick


class Watchdog(threading.Thread):
    """Samples the tree under `root` every `period` s; kills it over a cap and records why in ``killed``."""

    def __init__(self, root: int, limits: Limits, cpu_before: float = 0.0, period: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.limits, self.period = root, limits, period
        self.cpu_before, self.cpu_seconds, self.killed = cpu_before, 0.0, ""
        self.stopped = threading.Event()

    def sample(self) -> list[int]:
        pids = process_tree(self.root)
        rss, cpu = _usage(pids)
        self.cpu_seconds = max(self.cpu_seconds, cpu)
        limits = self.limits
        if limits.resident_bytes and rss > limits.resident_bytes:
            self.killed = (f"over the memory cap: {rss / 2**30:.2f} GiB resident across {len(pids)} processes "
                           f"(cap {limits.memory_bytes / 2**30:g} GiB, tmpfs included)")
        elif limits.max_procs and len(pids) > limits.max_procs:
            self.killed = f"over the process cap: {len(pids)} processes (cap {limits.max_procs})"
        elif limits.cpu_seconds and self.cpu_before + self.cpu_seconds > limits.cpu_seconds:
            self.killed = f"over the CPU-time cap of {limits.cpu_seconds:g} s"
        return pids

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            if not os.path.exists(f"/proc/{self.root}"):
                return
            pids = self.sample()
            if self.killed:
                kill_tree(pids)
                return


def kill_tree(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start(cmd: list[str], *, ro_binds: list[tuple[str, str]], env: dict[str, str], limits: Limits,
          pass_fds: tuple[int, ...], use_sandbox: bool = True) -> subprocess.Popen:
    """Start `cmd` in the sandbox (or, with use_sandbox False, only in a minimal environment)."""
    def preexec() -> None:
        os.nice(5)  # the trusted side (judge, driver) keeps priority over student code
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (2 * limits.memory_bytes, 2 * limits.memory_bytes))
        if limits.cpu_seconds:
            cap = int(limits.cpu_seconds) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cap, cap))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    if use_sandbox:
        bwrap = bwrap_path()
        if bwrap is None or not os.access(bwrap, os.X_OK):
            raise SandboxUnavailable(sandbox_problem() or "bwrap is not executable")
        argv = sandbox_argv(cmd, ro_binds=ro_binds, env=env, limits=limits, bwrap=bwrap)
    else:
        argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            pass_fds=pass_fds, start_new_session=True, preexec_fn=preexec, close_fds=True)


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing, not executable or cannot create namespaces here (the message says which)."""


def sandbox_problem() -> str | None:
    """Why the sandbox cannot be used here, naming the cause, or None when it works."""
    bwrap = bwrap_path()
    if bwrap is None:
        return ("bubblewrap (bwrap) is not installed or not on PATH: `sudo apt-get install bubblewrap` "
                "(Debian/Ubuntu), or `make grading-deps` as root")
    if not os.access(bwrap, os.X_OK):
        return f"{bwrap} is not executable (check its permissions)"
    executable, dirs = python_paths()
    argv = sandbox_argv([executable, "-c", "pass"], ro_binds=[(d, d) for d in dirs], env={}, limits=Limits(),
                        bwrap=bwrap)
    try:
        probe = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except OSError as err:
        return f"{bwrap} could not be started ({err.strerror})"
    if probe.returncode != 0:
        return ("bubblewrap could not start Python in a sandbox here (" + probe.stderr.strip()[:300] + "); "
                "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1)")
    return None


def copy_package(dest: Path, stubs: dict[str, list[str]], lab: str) -> Path:
    """A read-only copy of ``minimoe`` under `dest` in which each `stubs` entry (module -> names, ``Class.method``
    allowed) raises "not available while grading"; returns the folder to put on ``PYTHONPATH``.

    The stubbed definitions are *replaced* in the copied source (found with ``ast``: decorators, signature and
    body), so the reference's code is not in the sandbox at all: appending new bindings would leave it in the file
    for a student to read back and ``exec``."""
    import minimoe
    source = Path(minimoe.__file__).resolve().parent
    shutil.copytree(source, dest / "minimoe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for module, names in stubs.items():
        path = dest / (module.replace(".", "/") + ".py")
        if not path.is_file():
            raise FileNotFoundError(f"the stub list of {lab} names {module}, which has no file {path}")
        path.write_text(without_references(path.read_text(), names, module, lab))
    for root, _, files in os.walk(dest):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
    return dest


def without_references(text: str, names: list[str], module: str, lab: str) -> str:
    """`text` (a module's source) with each of `names` (``func`` or ``Class.method``) replaced by a definition of the
    same name that raises "not available while grading"; a name that is not defined there is an error."""
    import ast

    tree = ast.parse(text)
    spans = []  # (first line, last line, indent, name), 1-based and inclusive
    for name in names:
        owner, _, attr = name.rpartition(".")
        body = tree.body
        if owner:
            classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner]
            body = classes[0].body if classes else []
        found = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign))
                 and (getattr(n, "name", None) == attr
                      or isinstance(n, ast.Assign) and any(getattr(t, "id", None) == attr for t in n.targets))]
        if not found:
            raise ValueError(f"the stub list of {lab} names {module}.{name}, which {module} does not define")
        for node in found:
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            spans.append((first, node.end_lineno, node.col_offset, attr, name))
    lines = text.splitlines()
    for first, last, indent, attr, name in sorted(spans, reverse=True):
        pad = " " * indent
        lines[first - 1:last] = [
            f"{pad}def {attr}(*args, **kwargs):  # replaced by the grader",
            f"{pad}    raise RuntimeError('{module}.{name} is not available while grading {lab}: write it yourself')"]
    return "\n".join(lines) + "\n"
