"""Independent seeded runs side by side: ``fork_map(fn, jobs, workers)``.

The experiments of chapters 8, 11 and 12 train several models that share nothing but their starting point (arms,
methods × seeds, clinic settings). Each run is seeded on its own, so running them in parallel changes the wall
time and never a number. ``fork_map`` runs ``fn`` on each job in ``workers`` processes forked from this one (Linux
and macOS): a worker inherits ``fn`` and everything it refers to (the start model, the data) without pickling them,
uses one torch thread (two workers on two cores, as the book runs; more threads per worker would fight over the
cores), and sends its result back pickled. With ``workers=1`` the jobs run here, one after the other.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

J = TypeVar("J")
R = TypeVar("R")

_fn: Callable | None = None  # what the forked workers call: set only while a pool runs


def _call(job):
    torch.set_num_threads(1)
    return _fn(job)


def fork_map(fn: Callable[[J], R], jobs: Iterable[J], workers: int = 1) -> list[R]:
    """``[fn(job) for job in jobs]``, in ``workers`` forked processes of one thread each when ``workers`` > 1 and
    there is more than one job. The results come back in the order of ``jobs``; ``fn`` may be a closure or a
    lambda (it is inherited, not pickled), the jobs and results must pickle."""
    global _fn
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1):
        raise ValueError(f"workers ({workers!r}) must be a positive integer")
    jobs = list(jobs)
    if workers == 1 or len(jobs) < 2:
        return [fn(job) for job in jobs]
    if _fn is not None:
        raise RuntimeError("fork_map is already running a pool in this process; nested pools are not supported")
    _fn = fn
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_call, jobs, chunksize=1)
    finally:
        _fn = None
