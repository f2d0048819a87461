"""The student's side of grading: runs inside the sandbox, executes the notebook's code, then serves calls.

``python server.py CELLS_JSON READ_FD WRITE_FD`` executes each code cell of ``CELLS_JSON`` (the student's answer
cells, their own cells and the release's setup cells; never a test cell) in a plain IPython ``InteractiveShell``,
each under a timer of ``cell_timeout`` seconds, continuing after errors as a notebook would. It then answers call
requests on the data channel (``wire.py``): ``{"call": name, "args": [...], "grad": [i, ...]}`` calls the
function ``name`` of the notebook's namespace and replies ``{"value": result}`` (with ``"grads"`` of the result
with respect to the arguments listed in ``grad``, each a tensor or a list of tensors, and ``"args_after"``: the
tensor arguments, those in lists included, after the call) or
``{"error": "raised"}``. Nothing here is trusted: the judge checks every value it receives, and this process's
stdout and stderr go only to the lecturer's log.

The ``$config`` and ``$module`` specs of a request are built with this sandbox's copy of ``minimoe`` (in which the
reference implementations the lab asks for raise "not available while grading").
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

import wire

MODULES = {"MultiHeadLatentAttention": ("minimoe.attention.mla", "MultiHeadLatentAttention"),
           "RMSNorm": ("torch.nn", "RMSNorm"), "Linear": ("torch.nn", "Linear")}  # the last two: no config


class CellTimeout(Exception):
    """A cell ran longer than its time."""


def _alarm(signum, frame):
    raise CellTimeout("this cell ran out of time while grading")


def _config(payload):
    from minimoe.config import ModelConfig
    return ModelConfig.from_preset(payload["preset"]).replace(**payload.get("replace", {}))


def build(kind, payload, dec):
    """A ModelConfig or a module (weights loaded, optionally a layer disabled) from a request's spec."""
    if kind == "$config":
        return _config(payload)
    import importlib
    module_name, class_name = MODULES[payload["class"]]
    cls = getattr(importlib.import_module(module_name), class_name)
    config = () if payload["config"] is None else (_config(payload["config"]),)
    module = cls(*config, **payload.get("kwargs", {})).to(getattr(torch, payload["dtype"]))
    module.load_state_dict(dec(payload["state"]))
    for name in payload.get("disabled", []):
        layer = module.get_submodule(name)
        message = payload["disabled_message"]

        def refuse(*args, _message=message, **kwargs):
            raise RuntimeError(_message)

        layer.forward = refuse
    return module


def run_cells(shell, cells: list[str], timeout: float) -> list[bool]:
    """Run every cell (a timer cuts each at `timeout` seconds); whether each ended without an error."""
    ok = []
    signal.signal(signal.SIGALRM, _alarm)
    for source in cells:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            result = shell.run_cell(source, store_history=False)
            ok.append(bool(result.success))
        except BaseException:  # noqa: BLE001 (the timer, SystemExit: the next cell runs, as in a notebook)
            ok.append(False)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout.flush()
    return ok


def tensor_args(args) -> list:
    """The tensors among `args`, and inside the lists and tuples among them, in order."""
    return [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)]


def answer(shell, request: dict) -> dict:
    """Call the requested function of the notebook and return its value (and gradients, arguments after)."""
    fn = shell.user_ns.get(request["call"])
    if not callable(fn):
        return {"error": "missing"}
    args = list(request.get("args", []))
    for i in request.get("grad", []):  # a tensor, or a list of tensors (each gets its gradient)
        args[i] = (args[i].clone().requires_grad_() if isinstance(args[i], torch.Tensor)
                   else [a.clone().requires_grad_() for a in args[i]])
    try:
        value = fn(*args)
        reply = {"value": value}
        if request.get("grad"):
            grads = torch.autograd.grad(value, tensor_args([args[i] for i in request["grad"]]), allow_unused=True)
            reply["grads"] = tuple(grads)
        if request.get("args_after"):
            reply["args_after"] = tuple(tensor_args(args))
        wire.encode(reply)  # an unsendable value fails here, not half-way through sending
        return reply
    except BaseException:  # noqa: BLE001 (the judge only needs to know that it failed)
        return {"error": "raised"}


def main() -> None:
    cells_file, read_fd, write_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open(cells_file) as f:
        job = json.load(f)
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config
    config = Config()
    config.HistoryManager.enabled = False
    shell = InteractiveShell.instance(config=config)
    ok = run_cells(shell, job["cells"], job["cell_timeout"])
    wire.send(write_fd, {"ready": True, "cells_ok": ok})
    reader = wire.Reader(read_fd)
    while True:
        request = reader.message(build)
        while request is None:
            if not reader.feed():
                os._exit(0)
            request = reader.message(build)
        signal.setitimer(signal.ITIMER_REAL, job["call_timeout"])
        try:
            reply = answer(shell, request)
        except BaseException:  # noqa: BLE001 (the timer)
            reply = {"error": "raised"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout.flush()
        try:
            wire.send(write_fd, reply)
        except (wire.ProtocolError, TypeError, ValueError):
            wire.send(write_fd, {"error": "unsendable"})


if __name__ == "__main__":
    main()
