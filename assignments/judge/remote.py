"""The judge's handle on the student's code: a sandboxed ``server.py`` reached over a pair of pipes.

``Remote(session).rope_rotate(x, pos)`` sends the call as data and returns the student's result as data, or raises
:class:`CallFailed` with a kind written here (never text from the student's process). A call is timed in the
sandbox's own CPU time (so a CPU hog beside it in the batch does not make an honest submission time out), with a
generous wall-clock bound for code that sleeps. If the student's process dies or runs out of time it is started
again for the next call (the notebook re-run), at most ``max_starts`` times per submission; the function that
ended it is not called again.
"""

from __future__ import annotations

import json
import os
import select
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import sandbox
from judge import wire

HERE = Path(__file__).resolve().parent


class CallFailed(Exception):
    """A call that returned no value: ``kind`` is one of :data:`KINDS`."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


KINDS = {"raised": "raised an exception", "missing": "is not defined (its cell failed or was renamed)",
         "timeout": "ran out of time", "died": "ended its process (crashed, exited or was killed)",
         "protocol": "returned something that is not data the grader accepts",
         "unsendable": "returned something that is not data the grader accepts",
         "capped": "the sandbox was stopped at a cap"}


@dataclass
class Config:
    """A ``ModelConfig`` the server builds: ``ModelConfig.from_preset(preset).replace(**replace)``."""

    preset: str
    replace: dict = field(default_factory=dict)

    def build(self):
        from minimoe.config import ModelConfig
        return ModelConfig.from_preset(self.preset).replace(**self.replace)

    def wire_spec(self, enc):
        return {"$config": {"preset": self.preset, "replace": self.replace}}


@dataclass
class Module:
    """A module the server builds from its class, config and weights (``disabled`` layers raise when called);
    ``config=None`` for a ``torch.nn`` layer built from ``kwargs`` alone."""

    cls: str
    config: Config | None
    state: dict
    dtype: str = "float64"
    kwargs: dict = field(default_factory=dict)
    disabled: list = field(default_factory=list)
    disabled_message: str = ""

    def wire_spec(self, enc):
        config = None if self.config is None else self.config.wire_spec(enc)["$config"]
        return {"$module": {"class": self.cls, "config": config, "dtype": self.dtype,
                            "state": enc(dict(self.state)), "kwargs": self.kwargs, "disabled": self.disabled,
                            "disabled_message": self.disabled_message}}


@dataclass
class Settings:
    cell_timeout: float = 60.0  # wall seconds per notebook cell (a timer inside the sandbox)
    call_cpu_seconds: float = 60.0  # CPU seconds of the sandbox per call
    call_wall_seconds: float = 300.0  # wall seconds per call, for code that sleeps
    startup_wall_seconds: float = 900.0  # wall seconds for the notebook's cells, all together
    max_starts: int = 4


class Session:
    """The student's process for one submission: started lazily, restarted after a death, killed at the end."""

    def __init__(self, cells: list[str], submission_dir: Path, package_dir: Path, limits: sandbox.Limits,
                 settings: Settings, use_sandbox: bool, log_path: Path):
        self.cells, self.submission_dir, self.package_dir = cells, submission_dir, package_dir
        self.limits, self.settings, self.use_sandbox, self.log_path = limits, settings, use_sandbox, log_path
        self.private = Path(tempfile.mkdtemp(prefix="job-", dir=log_path.parent))
        self.job = self.private / "job.json"
        self.job.write_text(json.dumps({"cells": cells, "cell_timeout": settings.cell_timeout,
                                        "call_timeout": settings.call_wall_seconds}))
        self.proc = None
        self.starts, self.cpu_used, self.killed, self.cells_ok = 0, 0.0, "", []
        self.broken: dict[str, str] = {}  # function -> how a call of it ended the process: not called again
        self.log = bytearray()

    # -- the process ---------------------------------------------------------------------------------------------
    def _start(self) -> None:
        self.starts += 1
        to_child, self.to_server = os.pipe()
        self.from_server, from_child = os.pipe()
        executable, python_dirs = sandbox.python_paths()
        binds = [(d, d) for d in python_dirs] + [(str(self.package_dir), "/opt/minimoe"),
                                                 (str(HERE / "server.py"), "/opt/judge/server.py"),
                                                 (str(HERE / "wire.py"), "/opt/judge/wire.py"),
                                                 (str(self.job), "/opt/judge/job.json"),
                                                 (str(self.submission_dir), "/opt/submission")]
        env = {"PATH": f"{os.path.dirname(executable)}:/usr/bin:/bin", "HOME": sandbox.HOME,
               "PYTHONPATH": "/opt/minimoe:/opt/judge", "MPLBACKEND": "Agg", "MPLCONFIGDIR": "/tmp",
               "IPYTHONDIR": "/tmp/ipython", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        cmd = [executable, "-c", "import shutil; shutil.copytree('/opt/submission', '.', dirs_exist_ok=True); "
               "import runpy, sys; sys.argv = ['server.py', '/opt/judge/job.json', sys.argv[1], sys.argv[2]]; "
               "runpy.run_path('/opt/judge/server.py', run_name='__main__')", str(to_child), str(from_child)]
        if not self.use_sandbox:  # the paths above exist only inside bwrap: use the real ones
            cmd = [executable, str(HERE / "server.py"), str(self.job), str(to_child), str(from_child)]
            env["PYTHONPATH"] = f"{self.package_dir}:{HERE}"
        self.proc = sandbox.start(cmd, ro_binds=binds, env=env, limits=self.limits,
                                  pass_fds=(to_child, from_child), use_sandbox=self.use_sandbox)
        os.close(to_child)
        os.close(from_child)
        self.reader = wire.Reader(self.from_server)
        self.watchdog = sandbox.Watchdog(self.proc.pid, self.limits, cpu_before=self.cpu_used)
        self.watchdog.start()
        self.log_thread = threading.Thread(target=self._collect_log, args=(self.proc,), daemon=True)
        self.log_thread.start()
        ready = self._receive(self.settings.startup_wall_seconds, cpu_limit=None)
        if not isinstance(ready, dict) or not ready.get("ready"):
            raise CallFailed(ready if isinstance(ready, str) else "protocol")
        self.cells_ok = [bool(x) for x in ready.get("cells_ok", [])][:len(self.cells)]

    def _collect_log(self, proc) -> None:
        """Keep the first ``log_bytes`` of stdout + stderr (the lecturer's log); drain the rest."""
        while chunk := proc.stdout.read1(65536):
            room = self.limits.log_bytes - len(self.log)
            if room > 0:
                self.log += chunk[:room]

    def stop(self) -> None:
        """Kill the student's process and everything it started; account its CPU time."""
        if self.proc is None:
            return
        self.watchdog.stopped.set()
        self.watchdog.sample()
        sandbox.kill_tree(sandbox.process_tree(self.proc.pid))
        self.proc.wait()
        self.watchdog.join()
        self.log_thread.join(timeout=5)
        self.killed = self.killed or self.watchdog.killed
        self.cpu_used += self.watchdog.cpu_seconds
        for fd in (self.to_server, self.from_server):
            os.close(fd)
        self.proc = None

    def close(self) -> None:
        self.stop()
        for path in self.private.iterdir():
            path.unlink()
        self.private.rmdir()
        with open(self.log_path, "ab") as f:
            f.write(bytes(self.log))

    # -- calls -----------------------------------------------------------------------------------------------------
    def _receive(self, wall_limit: float, cpu_limit: float | None) -> dict | str:
        """The next message, or why none came: "died" (end of the channel), "capped", "timeout"."""
        start, cpu_start = time.monotonic(), self.watchdog.cpu_seconds
        while True:
            message = self.reader.message()
            if message is not None:
                return message
            if self.watchdog.killed:
                return "capped"
            if time.monotonic() - start > wall_limit:
                return "timeout"
            if cpu_limit is not None and self.watchdog.cpu_seconds - cpu_start > cpu_limit:
                return "timeout"
            ready, _, _ = select.select([self.from_server], [], [], 0.2)
            if ready and not self.reader.feed():
                return "died"

    def call(self, name: str, args: tuple, grad: tuple[int, ...] = (), args_after: bool = False) -> dict:
        """The reply to one call: a dict with ``value`` (and ``grads``, ``args_after``); raises CallFailed."""
        if name in self.broken:
            raise CallFailed(self.broken[name])
        if self.proc is None:
            if self.killed:
                raise CallFailed("capped")
            if self.starts >= self.settings.max_starts:
                raise CallFailed("died")
            try:
                self._start()
            except CallFailed:
                self.stop()
                raise
            except wire.ProtocolError:
                self.stop()
                raise CallFailed("protocol") from None
        try:
            wire.send(self.to_server, {"call": name, "args": list(args), "grad": list(grad),
                                       "args_after": args_after})
            reply = self._receive(self.settings.call_wall_seconds, self.settings.call_cpu_seconds)
        except (BrokenPipeError, OSError):
            reply = "died"
        except wire.ProtocolError:
            self.stop()
            raise CallFailed("protocol") from None
        if isinstance(reply, str):
            self.stop()
            self.broken[name] = "capped" if self.killed else reply
            raise CallFailed(self.broken[name])
        if "error" in reply:
            raise CallFailed(reply["error"] if reply["error"] in KINDS else "raised")
        if "value" not in reply:
            raise CallFailed("protocol")
        return reply


class Remote:
    """``remote.fn(*args)`` calls the student's ``fn`` in the sandbox and returns its value (data only)."""

    def __init__(self, session: Session):
        self._session = session

    def __getattr__(self, name: str):
        def call(*args, grad: tuple[int, ...] = (), full: bool = False):
            reply = self._session.call(name, args, grad=grad, args_after=full)
            return reply if full or grad else reply["value"]
        return call


def module_spec(module: torch.nn.Module, cls: str, config: Config, **kwargs) -> Module:
    """The spec that rebuilds `module` (same class, config and weights) in the sandbox."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    dtype = str(next(module.parameters()).dtype).removeprefix("torch.")
    return Module(cls, config, state, dtype, **kwargs)
