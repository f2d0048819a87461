"""One bubblewrap sandbox per student kernel, and a watchdog that caps the whole sandbox.

``grade.py`` grades each submission with nbgrader, which runs outside any sandbox (it holds the per-run evidence
secret and writes the private gradebook copy); only the *kernel* that executes the student's code starts inside
``bwrap`` (Debian's ``bubblewrap``). nbgrader reaches that kernel over ZeroMQ ``ipc`` sockets in a folder shared
with the sandbox, so the sandbox needs no network at all. Inside:

- every namespace is unshared (user, PID, network, IPC, UTS, cgroup): no network, not even the host's loopback;
  its own PID space, so the kernel sees neither the grader nor other students, and everything the kernel started
  dies with it (``--die-with-parent``: also when the grading process is killed);
- ``--new-session`` (no terminal to inject keystrokes into), ``--cap-drop ALL``, an unprivileged uid;
- read-only: ``/usr``, the few files of ``/etc`` that programs need, the Python installation, the virtual
  environment and a *copy* of the ``minimoe`` package made for this batch (an editable install would otherwise
  expose the repository);
- writable: only the submission's own folder (the kernel's working directory), the socket folder, and a private
  ``/tmp``; nothing else of the disk exists in the sandbox (not the course, not other students, not the gradebook);
- a minimal environment: ``PATH``, ``HOME=/tmp``, ``PYTHONPATH`` (the package copy), the per-student grading seed.

Limits that hold across the kernel's child processes: a watchdog thread outside the sandbox sums the resident memory
of every process in the sandbox's tree and counts them, and kills the whole sandbox when either goes over its cap
(cgroup v2 would do the same in the kernel; this works without a writable cgroup). ``RLIMIT_AS`` still caps each
process on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager
from traitlets import Bool, Float, Integer, Unicode

# The few files of /etc a Python kernel with matplotlib needs (dynamic loader cache, fonts, time zone).
_ETC = ["/etc/ld.so.cache", "/etc/fonts", "/etc/localtime", "/etc/passwd", "/etc/group"]


def bwrap_path() -> str | None:
    """The bubblewrap executable, if installed and able to create namespaces here."""
    return shutil.which("bwrap")


def sandbox_argv(cmd: list[str], *, work_dir: str, socket_dir: str, package_dir: str,
                 env: dict[str, str], bwrap: str = "bwrap") -> list[str]:
    """The ``bwrap`` command line that runs `cmd` in the sandbox described in this module's docstring."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", "1000", "--gid", "1000",
            "--ro-bind", "/usr", "/usr", "--tmpfs", "/tmp", "--proc", "/proc", "--dev", "/dev"]
    for top in ("bin", "lib", "lib64", "sbin"):  # merged-/usr systems link these into /usr
        path = Path("/" + top)
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for path in _ETC:
        argv += ["--ro-bind-try", path, path]
    python_dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, package_dir)}
    python_dirs.add(os.path.realpath(Path(sys.executable).parent.parent))
    for path in sorted(python_dirs):
        if not path.startswith("/usr/"):
            argv += ["--ro-bind", path, path]
    for path in (work_dir, socket_dir):
        argv += ["--bind", path, path]
    argv += ["--clearenv", "--chdir", work_dir]
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
    """`root` and all its descendants (processes of a PID namespace stay descendants of its bwrap)."""
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def resident_bytes(pids: list[int]) -> int:
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


class Watchdog(threading.Thread):
    """Kill the process tree under `root` when it holds more than `memory_bytes` resident or `max_procs` processes;
    the reason is written to `verdict_file` (outside the sandbox) for ``grade.py``."""

    def __init__(self, root: int, memory_bytes: int, max_procs: int, verdict_file: str, period: float = 0.1):
        super().__init__(daemon=True)
        self.root, self.memory_bytes, self.max_procs = root, memory_bytes, max_procs
        self.verdict_file, self.period = verdict_file, period
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            pids = process_tree(self.root)
            if len(pids) == 1 and not os.path.exists(f"/proc/{self.root}"):
                return
            used = resident_bytes(pids) if self.memory_bytes > 0 else 0
            reason = None
            if self.memory_bytes > 0 and used > self.memory_bytes:
                reason = (f"the sandbox used {used / 2**30:.2f} GiB across {len(pids)} processes, over the "
                          f"{self.memory_bytes / 2**30:g} GiB cap")
            elif self.max_procs > 0 and len(pids) > self.max_procs:
                reason = f"the sandbox ran {len(pids)} processes, over the cap of {self.max_procs}"
            if reason:
                with open(self.verdict_file, "w") as f:
                    json.dump({"killed": reason}, f)
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                return


class SandboxedKernelManager(AsyncKernelManager):
    """An nbclient kernel manager whose kernel runs in :func:`sandbox_argv`, reached over ``ipc`` sockets.

    Configured by ``grade.py`` in its staging copy of ``nbgrader_config.py``."""

    socket_dir = Unicode(help="folder for the connection file and ipc sockets, shared with the sandbox").tag(config=True)
    package_dir = Unicode(help="folder holding the read-only copy of the minimoe package").tag(config=True)
    grading_seed = Unicode("", help="MINIMOE_GRADING_SEED in the kernel's environment").tag(config=True)
    verdict_file = Unicode(help="where the watchdog writes why it killed the sandbox").tag(config=True)
    memory_bytes = Integer(0, help="resident memory cap of the whole sandbox (0: none)").tag(config=True)
    max_procs = Integer(64, help="process cap of the whole sandbox").tag(config=True)
    watchdog_period = Float(0.1, help="seconds between two watchdog looks").tag(config=True)
    sandbox = Bool(True, help="run the kernel in bwrap (False: only the minimal environment, for "
                              "--unsafe-no-sandbox)").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        self.ip = os.path.join(self.socket_dir, "kernel")
        self.connection_file = os.path.join(self.socket_dir, "connection.json")
        self._watchdog: Watchdog | None = None
        # A signal would reach bwrap, not the kernel inside: interrupt (cell timeouts) with a control message.
        self.kernel_spec.interrupt_mode = "message"

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]), "HOME": "/tmp",
               "PYTHONPATH": self.package_dir, "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp",
               "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MINIMOE_GRADING_SEED": self.grading_seed}
        if not self.sandbox:
            return ["env", "-i", *(f"{key}={value}" for key, value in env.items()), *cmd]
        work_dir = self._launch_args.get("cwd") or os.getcwd()
        return sandbox_argv(cmd, work_dir=os.path.realpath(work_dir), socket_dir=self.socket_dir,
                            package_dir=self.package_dir, env=env, bwrap=bwrap_path() or "bwrap")

    async def _async_post_start_kernel(self, **kw) -> None:
        await super()._async_post_start_kernel(**kw)
        process = getattr(self.provisioner, "process", None)
        if process is not None and (self.memory_bytes > 0 or self.max_procs > 0):
            self._watchdog = Watchdog(process.pid, self.memory_bytes, self.max_procs, self.verdict_file,
                                      self.watchdog_period)
            self._watchdog.start()

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        if self._watchdog is not None:
            self._watchdog.stopped.set()
        await super()._async_cleanup_resources(restart=restart)


def copy_package(dest: Path) -> Path:
    """A read-only copy of the installed ``minimoe`` package under `dest` (returned: the folder to put on the path)."""
    import minimoe
    source = Path(minimoe.__file__).resolve().parent
    shutil.copytree(source, dest / "minimoe", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for root, dirs, files in os.walk(dest):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
    return dest
