"""Grade items and the checks they share: what the judge knows, and how it decides.

A lab's judge module (``a1_mla.py`` …) lists :class:`Item`s. Each item belongs to one test cell of the notebook
(its ``cell``, the cell's nbgrader ``grade_id``), is worth ``points`` and checks one behaviour: a main behaviour
or one edge case, so that an edge-case slip costs only its own points. An item draws its inputs from its own seed
(the submission's grading seed and the item's name), computes what the reference gives with the judge's own,
trusted ``minimoe``, calls the student's function through a :class:`~judge.remote.Remote`, and checks what comes
back: type first, then dtype, shape, and finally values. It fails with :class:`Failed`, whose message is written
here and is the only text of a check that feedback shows (no inputs, no values, no student output).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import torch

from judge.remote import CallFailed, Remote


class Failed(Exception):
    """A check that did not pass; the message is the feedback line (the function and the kind of check)."""


@dataclass(frozen=True)
class Item:
    """One grade item: ``check(remote, gen)`` returns normally to pass, raises :class:`Failed` to fail."""

    cell: str  # grade_id of the notebook's test cell whose points this item shares
    name: str  # shown in feedback: what is checked, never the inputs
    points: float
    check: Callable[[Remote, torch.Generator], None]


@dataclass
class Outcome:
    item: Item
    passed: bool
    message: str

    @property
    def score(self) -> float:
        return self.item.points if self.passed else 0.0


def item_seed(grading_seed: str, item: Item) -> int:
    """The item's seed: from the submission's grading seed (an HMAC of the course secret) and the item's name."""
    return int.from_bytes(hashlib.sha256(f"{grading_seed}/{item.cell}/{item.name}".encode()).digest()[:8], "little")


def run_items(items: list[Item], remote: Remote, grading_seed: str) -> list[Outcome]:
    """Every item, in order, each on its own generator; a failure of one never stops the others."""
    outcomes = []
    for item in items:
        gen = torch.Generator().manual_seed(item_seed(grading_seed, item))
        try:
            item.check(remote, gen)
            outcomes.append(Outcome(item, True, "passed"))
        except Failed as failure:
            outcomes.append(Outcome(item, False, str(failure)))
    return outcomes


def call(remote: Remote, fn: str, *args, grad: tuple[int, ...] = (), full: bool = False):
    """The student's ``fn(*args)``; a call that returns nothing fails with the kind of problem."""
    try:
        return getattr(remote, fn)(*args, grad=grad, full=full)
    except CallFailed as err:
        from judge.remote import KINDS
        raise Failed(f"{fn}: {KINDS[err.kind]}") from None


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest entry of b (NaN anywhere gives inf)."""
    a, b = a.detach().double(), b.detach().double()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) if b.numel() else 0.0


def check_form(fn: str, got, want: torch.Tensor) -> None:
    """Type, dtype and shape of `got` against `want`, in that order (the cause named first)."""
    if type(got) is not torch.Tensor:
        raise Failed(f"{fn}: wrong type (a torch.Tensor is expected)")
    if got.dtype != want.dtype:
        raise Failed(f"{fn}: wrong dtype")
    if got.shape != want.shape:
        raise Failed(f"{fn}: wrong shape")


def check_tensor(fn: str, got, want: torch.Tensor, tol: float, what: str = "wrong value") -> None:
    """Type, dtype, shape, then values of `got` against `want` (a tensor of the judge's own)."""
    check_form(fn, got, want)
    if not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
        raise Failed(f"{fn}: NaN or inf in the result")
    if not rel_err(got, want) <= tol:
        raise Failed(f"{fn}: {what}")


def tensors(fn: str, value, n: int) -> tuple[torch.Tensor, ...]:
    """The n tensors a function returns as a tuple (or list)."""
    if not isinstance(value, (tuple, list)) or len(value) != n or any(type(v) is not torch.Tensor for v in value):
        raise Failed(f"{fn}: wrong type (a tuple of {n} tensors is expected)")
    return tuple(value)


def unchanged(fn: str, reply: dict, args: tuple) -> None:
    """The tensor arguments (also those in lists) came back as they were sent (the function must not modify its
    inputs)."""
    sent = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a]) if isinstance(t, torch.Tensor)]
    after = reply.get("args_after")
    if not isinstance(after, tuple) or len(after) != len(sent) or any(
            type(a) is not torch.Tensor or a.shape != s.shape or not torch.equal(a.to(s.dtype), s)
            for a, s in zip(after, sent)):
        raise Failed(f"{fn}: modified its inputs")
