"""Rule-based rewards on completion strings (DeepSeek-R1 §2.2.2): accuracy and format, and a weighted sum.

Every reward function has the same signature, `fn(completions, problems) -> Tensor (N,)`, so rewards compose and a
trainer never needs to know which one it holds. `problems[i]` is the problem `completions[i]` answers; it provides
`is_correct(answer: str) -> bool` (see `minimoe.tasks.template.Checkable`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from minimoe.tasks.template import Checkable, check_answer, parse_completion

RewardFn = Callable[[Sequence[str], Sequence[Checkable]], torch.Tensor]


def _check_lengths(completions: Sequence[str], problems: Sequence[Checkable] | None) -> None:
    if problems is not None and len(problems) != len(completions):
        raise ValueError(f"problems must have one entry per completion; got {len(problems)} problems for "
                         f"{len(completions)} completions")


def accuracy_reward(completions: Sequence[str], problems: Sequence[Checkable]) -> torch.Tensor:
    """1.0 where the answer inside `<answer>…</answer>` is correct for its problem, else 0.0.

    Shapes:
        completions: N strings, problems: N problems -> (N,) float32
    """
    _check_lengths(completions, problems)
    return torch.tensor([float(check_answer(p, c)) for c, p in zip(completions, problems)], dtype=torch.float32)


def format_reward(completions: Sequence[str], problems: Sequence[Checkable] | None = None) -> torch.Tensor:
    """1.0 where the completion is exactly `<think>…</think><answer>…</answer>` (whitespace between allowed).

    This rule is ours and stricter than R1's: DeepSeek-R1 §2.2.2 describes a format reward that only requires the
    model to put its thinking process between `<think>` and `</think>` tags. Demanding the whole structure gives a
    tiny policy no credit for half-formed output, and lets the accuracy reward find the answer block.

    `problems` is accepted for a uniform signature and not used.

    Shapes:
        completions: N strings -> (N,) float32
    """
    _check_lengths(completions, problems)
    return torch.tensor([float(parse_completion(c).well_formed) for c in completions], dtype=torch.float32)


def reward_name(fn: object) -> str:
    """How error messages name a reward function: its ``__name__``, else its repr."""
    return getattr(fn, "__name__", None) or repr(fn)


def checked_rewards(fn: RewardFn, completions: Sequence[str], problems: Sequence[Checkable], *,
                    step: int | None = None, nonfinite: str = "raise") -> torch.Tensor:
    """``fn(completions, problems)`` as a float32 tensor (N,), checked. Anything but N numbers raises ``ValueError``
    naming ``fn``; so does a NaN or ±inf reward (a value the user's function hands in, hence ``ValueError``), unless
    ``nonfinite="keep"``, which returns it for the caller to handle (``GRPOConfig(on_nonfinite_reward="skip")``).

    Shapes: completions: N strings, problems: N problems -> (N,) float32
    """
    where = f" at step {step}" if step is not None else ""
    raw = fn(completions, problems)
    try:
        rewards = torch.as_tensor(raw, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"reward function {reward_name(fn)} must return {len(completions)} numbers{where}, got "
                         f"{type(raw).__name__}: {e}") from e
    if rewards.shape != (len(completions),):
        raise ValueError(f"reward function {reward_name(fn)} returned shape {tuple(rewards.shape)}{where}; it must "
                         f"return one reward per completion: shape ({len(completions)},)")
    if nonfinite == "raise" and not torch.isfinite(rewards).all():
        bad = rewards[~torch.isfinite(rewards)]
        raise ValueError(f"reward function {reward_name(fn)} returned {bad.numel()} non-finite reward(s) "
                         f"({bad[0].item()} first){where}; fix it, or skip such steps with "
                         "GRPOConfig(on_nonfinite_reward='skip')")
    return rewards


class CombinedReward:
    """Σ_k w_k · fn_k(completions, problems), e.g. R1-Zero's accuracy + format reward.

    Shapes:
        completions: N strings, problems: N problems -> (N,) float32
    """

    def __init__(self, terms: Sequence[tuple[RewardFn, float]]):
        if not terms:
            raise ValueError("terms must hold at least one (reward_fn, weight) pair")
        for fn, weight in terms:
            if not callable(fn):
                raise TypeError(f"each term must be (callable, weight); got {fn!r} as the reward function")
            if not math.isfinite(weight):
                raise ValueError(f"weights must be finite numbers; got {weight!r} for {fn!r}")
        self.terms = [(fn, float(weight)) for fn, weight in terms]

    def __call__(self, completions: Sequence[str], problems: Sequence[Checkable]) -> torch.Tensor:
        _check_lengths(completions, problems)
        total = torch.zeros(len(completions), dtype=torch.float32)
        for fn, weight in self.terms:  # each term checked, so an error names the term, not the sum
            total += weight * checked_rewards(fn, completions, problems, nonfinite="keep")
        return total

    def __repr__(self) -> str:
        names = " + ".join(f"{w:g}·{getattr(fn, '__name__', repr(fn))}" for fn, w in self.terms)
        return f"CombinedReward({names})"


def combine_rewards(terms: Sequence[tuple[RewardFn, float]]) -> CombinedReward:
    """A reward function returning the weighted sum of `terms` = [(reward_fn, weight), …]."""
    return CombinedReward(terms)
