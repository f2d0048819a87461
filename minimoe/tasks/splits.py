"""Deterministic train / held-out splits that can never overlap.

A problem's split is a pure function of its canonical key (a string naming the problem up to symmetries, e.g. the
sorted numbers and target of a countdown puzzle): the key is hashed with BLAKE2 and the hash decides. The split
therefore does not depend on the seed, the order of generation or how many problems were drawn, so no train problem
can ever appear in the held-out set. The seed only decides which problems of a split are drawn.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TypeVar

P = TypeVar("P")
SPLITS = ("train", "heldout")


def split_of(key: str, heldout_fraction: float) -> str:
    """"heldout" for a fraction `heldout_fraction` of all keys (chosen by hash), "train" for the rest."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1), fixed per key
    return "heldout" if u < heldout_fraction else "train"


def draw_unique(draw: Callable[[random.Random], P], key: Callable[[P], str], n: int, split: str,
                heldout_fraction: float, seed: int, max_attempts: int | None = None) -> list[P]:
    """`n` distinct problems of `split`, drawn by `draw(rng)` from a `random.Random(seed)`.

    Problems whose key belongs to the other split, or repeats one already drawn, are rejected. Raises ValueError
    when `max_attempts` draws (default 100·n + 1000) do not yield `n` problems: the problem space is too small.

    Shapes:
        returns a list of length n
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1); got {heldout_fraction}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    rng = random.Random(f"{split}:{seed}")
    max_attempts = 100 * n + 1000 if max_attempts is None else max_attempts
    seen: set[str] = set()
    problems: list[P] = []
    for _ in range(max_attempts):
        if len(problems) == n:
            break
        problem = draw(rng)
        k = key(problem)
        if k in seen or split_of(k, heldout_fraction) != split:
            continue
        seen.add(k)
        problems.append(problem)
    if len(problems) < n:
        raise ValueError(f"could only draw {len(problems)} distinct {split} problems of the {n} asked for in "
                         f"{max_attempts} attempts; widen the task (more digits or numbers) or ask for fewer")
    return problems
