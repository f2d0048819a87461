"""One checkpoint format for every minimoe trainer, with a checksum, and where demos keep their files.

A checkpoint file is a small header followed by a payload::

    minimoe-checkpoint\\n
    version 2\\n
    sha256 <64 hex digits of the payload>\\n
    <payload: torch.save of {"model_config", "model_state", "optimizer_state", "step", "history", "extra"}>

The loader reads the whole file, checks the header, the version and the checksum, then unpickles the payload with
``weights_only=True``; an empty, truncated, overwritten (e.g. zeroed bytes) or foreign file, or one whose weights
do not fit its config, raises ``CheckpointError`` (a ``ValueError``) naming the path and the problem. Files are
written atomically (temporary file + rename) with ordinary permissions (0644 under the usual umask).

Demos and notebooks write under ``checkpoint_dir()`` (``$MINIMOE_HOME``, default ``~/.cache/minimoe``), never inside
the installed package; checkpoints shipped in the package are read-only data.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from minimoe.config import ModelConfig
from minimoe.history import History

MAGIC = b"minimoe-checkpoint\n"
FORMAT_VERSION = 2
HOME_ENV = "MINIMOE_HOME"


class CheckpointError(ValueError):
    """A file that is not a readable minimoe checkpoint; the message names the path and the problem."""


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns; unpacks as ``model, optimizer_state, history, step, extra``."""

    model: nn.Module
    optimizer_state: dict[str, Any] | None
    history: History | None
    step: int
    extra: dict[str, Any]


def checkpoint_dir() -> Path:
    """Where demos and notebooks write checkpoints: ``$MINIMOE_HOME`` if set, else ``~/.cache/minimoe``."""
    home = os.environ.get(HOME_ENV)
    return Path(home).expanduser() if home else Path.home() / ".cache" / "minimoe"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None, *, step: int | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s config and weights, and optionally the optimizer state, the step reached, the history and
    ``extra`` (plain data, e.g. a trainer's config) to ``path``; return the path. ``step`` defaults to
    ``len(history)``."""
    payload = {
        "model_config": model.cfg.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": None if optimizer is None else optimizer.state_dict(),
        "step": (len(history) if history is not None else 0) if step is None else int(step),
        "history": None if history is None else history.to_dict(),
        "extra": dict(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = MAGIC + f"version {FORMAT_VERSION}\nsha256 {hashlib.sha256(body).hexdigest()}\n".encode()
    return atomic_write(header + body, path)


def atomic_write(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename: never a truncated file at ``path``. The file
    gets the permissions a plain ``open`` would give (0666 minus the umask), not ``mkstemp``'s 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def read_payload(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The verified payload dict of a checkpoint file; ``CheckpointError`` names the path and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the save was interrupted or never happened")
    if not data.startswith(MAGIC):
        if data.startswith(MAGIC[:len(data)]):
            raise CheckpointError(f"checkpoint {path} is truncated ({len(data)} bytes, inside the header)")
        raise CheckpointError(f"{path} is not a minimoe checkpoint (it does not start with {MAGIC!r}; files from "
                              "torch.save alone are not accepted)")
    lines = data[len(MAGIC):].split(b"\n", 2)
    if len(lines) < 3 or not lines[0].startswith(b"version ") or not lines[1].startswith(b"sha256 "):
        raise CheckpointError(f"checkpoint {path} has a damaged or truncated header")
    version = lines[0][len(b"version "):].decode(errors="replace")
    if version != str(FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {path} has format version {version}; this minimoe reads version "
                              f"{FORMAT_VERSION}: regenerate it with the command that made it")
    expected, body = lines[1][len(b"sha256 "):].decode(errors="replace"), lines[2]
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt: the sha256 of its {len(body):,}-byte payload is "
                              f"{actual[:12]}…, the header says {expected[:12]}… (truncated or overwritten bytes)")
    try:
        payload = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (a checksummed payload that does not unpickle: written by other code)
        raise CheckpointError(f"checkpoint {path} has a valid checksum but an unreadable payload: {e}") from e
    missing = {"model_config", "model_state", "optimizer_state", "step", "history", "extra"} - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return payload


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the stored ``ModelConfig`` and weights; also return the optimizer state, history, step
    and extra data. Resume an optimizer with ``make_optimizer(model, …).load_state_dict(optimizer_state)``."""
    from minimoe.model import Transformer  # here, not at import: the model package imports nothing from training

    payload = read_payload(path, map_location)
    try:
        cfg = ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} holds an invalid model config: {e}") from e
    model = Transformer(cfg)
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its config ({e})") from e
    history = None if payload["history"] is None else History.from_dict(payload["history"])
    return Checkpoint(model.to(map_location), payload["optimizer_state"], history, payload["step"], payload["extra"])
