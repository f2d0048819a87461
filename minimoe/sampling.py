"""Sampling: the draws of ``generate`` and ``speculative_generate``, and the left-padded prompt batch both start from.

A next token is the argmax of the logits (temperature 0, greedy) or a draw from softmax(logits / temperature),
optionally restricted to the ``top_k`` most likely tokens and/or to the nucleus, the smallest set of most likely
tokens whose probability reaches ``top_p`` (Holtzman et al. 2020, §3.1). Prompts of different lengths are
left-padded so that every row's next token sits in the last column; a padding mask hides the pad keys and each
row's positions start at 0 on its first real token, so a padded row computes exactly what it would alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` naming the first bad sampling setting."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature ({temperature!r}) must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k ({top_k!r}) must be a positive integer or None")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p ({top_p}) must be in (0, 1] or None")


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution ``sample_next`` draws from (temperature > 0), float32: softmax(logits / temperature) with
    every token outside the top-k and outside the nucleus of mass ``top_p`` set to 0.

    Shapes: logits (..., V) -> probabilities (..., V).
    """
    shape = logits.shape
    logits = logits.reshape(-1, shape[-1]).float() / temperature  # (N, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
        drop = mass_before >= top_p  # the first token has mass_before 0, so it is always kept
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits.softmax(dim=-1).reshape(shape)


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row: argmax when ``temperature == 0``, else a draw from ``sampling_probs``.

    Shapes: logits (B, V) -> tokens (B,) long.
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def check_finite_logits(logits: torch.Tensor, step: int) -> None:
    """Raise ``FloatingPointError`` naming generation ``step`` when ``logits`` hold a NaN or ±inf (argmax would
    silently return token 0)."""
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError(f"the model returned non-finite logits at generation step {step} "
                                 "(NaN or inf in the weights or activations?)")


class PromptBatch(NamedTuple):
    """Prompts left-padded into one batch.

    Shapes: tokens (B, P) long, padding_mask (B, P) bool (True on real tokens), position_ids (B, P) long, 0 on
    each row's first real token (and on the padding before it).
    """

    tokens: torch.Tensor
    padding_mask: torch.Tensor
    position_ids: torch.Tensor


def checked_prompts(prompts: list[list[int]] | list[int] | torch.Tensor, max_new_tokens: int,
                    max_position_embeddings: int) -> list[list[int]]:
    """``prompts`` as a non-empty list of non-empty token-id lists (one list of ints is a batch of one), after
    checking that ``max_new_tokens`` is a count and that the longest prompt plus its completion fits the model's
    ``max_position_embeddings``; a bad value raises ``ValueError`` naming it."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists (or one list of ints)")
    if all(isinstance(t, int) for t in prompts):
        prompts = [prompts]
    batch = [list(p) for p in prompts]
    for i, p in enumerate(batch):
        if len(p) == 0:
            raise ValueError(f"prompts[{i}] is empty: every prompt needs at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            raise ValueError(f"prompts[{i}] must hold integer token ids")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens!r}) must be a non-negative integer")
    width = max(len(p) for p in batch)
    if width + max_new_tokens - 1 > max_position_embeddings:
        raise ValueError(f"the longest prompt ({width}) plus max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position_embeddings ({max_position_embeddings})")
    return batch


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device | str | None = None) -> PromptBatch:
    """Stack token lists of any lengths (one may be empty), padding on the left with ``pad_id``.

    Shapes: B lists, the longest P tokens -> PromptBatch of (B, P) tensors.
    """
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, P)
    padding_mask = torch.zeros(len(prompts), width, dtype=torch.bool)  # (B, P)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            tokens[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            padding_mask[row, width - len(prompt):] = True
    padding_mask = padding_mask.to(device)
    return PromptBatch(tokens.to(device), padding_mask, positions(padding_mask))


def positions(padding_mask: torch.Tensor) -> torch.Tensor:
    """Per-row positions that start at 0 on each row's first real token (0 on the left padding too).

    Shapes: padding_mask (B, S) bool -> position_ids (B, S) long.
    """
    return (padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
