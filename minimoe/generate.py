"""Batched generation with the KV (or latent) cache: one prefill, then one-token decode steps.

Prompts of different lengths are left-padded so every row's next token sits in the last column. A padding mask
hides the pad keys and per-row position ids start at 0 on each row's first real token, so a padded row computes
exactly what it would alone. Sampling is greedy (temperature 0) or from the temperature-scaled distribution,
optionally restricted to the top-k tokens and/or the nucleus of probability top-p (Holtzman et al. 2020).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row: argmax when ``temperature == 0``, else a sample from
    softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the smallest set whose
    probability reaches ``top_p`` (the most likely token is always kept).

    Shapes: logits (B, V) -> tokens (B,) long.
    """
    _check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = sampling_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                   top_p: float | None = None) -> torch.Tensor:
    """The distribution ``sample_next`` draws from (temperature > 0), float32.

    Shapes: logits (..., V) -> probabilities (..., V).
    """
    shape = logits.shape
    logits = logits.reshape(-1, shape[-1]).float() / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
        drop = mass_before >= top_p  # the first token has mass_before 0, so it is always kept
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits.softmax(dim=-1).reshape(shape)


@torch.no_grad()
def generate(model: nn.Module, prompts: list[list[int]] | list[int], max_new_tokens: int, *,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             eos_token_id: int | None = None, pad_token_id: int = 0, progress: bool = False,
             speculative: str | None = None, use_cache: bool = True, return_stats: bool = False) -> Any:
    """Continue each prompt by up to ``max_new_tokens`` tokens with ``model`` (a ``minimoe.Transformer``).

    ``prompts`` is a list of token-id lists (any lengths) or one list of ints (a batch of one). Returns the
    completions only, one list per prompt; a row stops after emitting ``eos_token_id`` (included). ``seed`` seeds
    a ``torch.Generator``: the same seed gives the same samples. ``progress`` shows a tqdm bar over decode steps.
    ``pad_token_id`` only fills the left padding, which the padding mask hides.

    ``speculative="mtp"`` drafts with the model's MTP modules and verifies in one forward of the main model
    (``minimoe.speculative``): the same greedy output, the same sampling distribution, fewer forward passes;
    ``use_cache`` (speculative only) and ``return_stats`` (then ``(completions, SpeculativeStats)``) belong to it.

    Shapes: tokens fed to the model (B, P) at prefill, then (B, 1) per step.
    """
    if speculative is not None:
        from minimoe.speculative import speculative_generate

        if speculative != "mtp":
            raise ValueError(f"speculative ({speculative!r}) must be None or 'mtp'")
        return speculative_generate(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                    use_cache=use_cache, return_stats=return_stats)
    if not use_cache or return_stats:
        raise ValueError("use_cache=False and return_stats=True belong to speculative='mtp'")
    prompts = _as_batch(prompts)
    _check_sampling(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens!r}) must be a non-negative integer")
    cfg = model.cfg
    width = max(len(p) for p in prompts)
    if width + max_new_tokens - 1 > cfg.max_position_embeddings:
        raise ValueError(f"the longest prompt ({width}) plus max_new_tokens ({max_new_tokens}) exceeds "
                         f"max_position_embeddings ({cfg.max_position_embeddings})")
    completions: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return completions

    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    tokens = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)  # (B, P)
    padding_mask = torch.zeros(len(prompts), width, dtype=torch.bool, device=device)  # (B, P)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        padding_mask[row, width - len(prompt):] = True
    position_ids = (padding_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (B, P): 0 at each first real token

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        logits = model(tokens, position_ids=position_ids, cache=cache, padding_mask=padding_mask).logits  # (B, P, V)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for step in tqdm(range(max_new_tokens), disable=not progress, desc="generate"):
            last = logits[:, -1]  # (B, V)
            if not bool(torch.isfinite(last).all()):  # NaN weights or activations: argmax would return token 0
                raise FloatingPointError(f"the model returned non-finite logits at generation step {step} "
                                         "(NaN or inf in the weights or activations?)")
            next_token = sample_next(last, temperature, top_k, top_p, generator)  # (B,)
            for row in (~done).nonzero().flatten().tolist():
                completions[row].append(int(next_token[row]))
            if eos_token_id is not None:
                done |= next_token == eos_token_id
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            position_ids = position_ids[:, -1:] + 1  # (B, 1)
            padding_mask = torch.cat([padding_mask, padding_mask.new_ones(len(prompts), 1)], dim=1)  # (B, S)
            logits = model(next_token[:, None], position_ids=position_ids, cache=cache,
                           padding_mask=padding_mask).logits  # (B, 1, V)
    finally:
        model.train(was_training)
    return completions


def _as_batch(prompts: list[list[int]] | list[int]) -> list[list[int]]:
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
    return batch


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature ({temperature!r}) must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k ({top_k!r}) must be a positive integer or None")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p ({top_p}) must be in (0, 1] or None")
