"""Batched generation with the KV (or latent) cache: one prefill, then one-token decode steps.

Prompts of different lengths are left-padded (``minimoe.sampling.left_pad``) so every row's next token sits in the
last column; a padded row computes exactly what it would alone. Each token is greedy (temperature 0) or drawn from
the temperature-scaled distribution, optionally restricted to the top-k tokens and/or the nucleus of probability
top-p (``minimoe.sampling.sample_next``). ``speculative="mtp"`` hands over to ``minimoe.speculative``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from minimoe.sampling import check_finite_logits, check_sampling, checked_prompts, left_pad, sample_next
from minimoe.speculative import speculative_generate


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
        if speculative != "mtp":
            raise ValueError(f"speculative ({speculative!r}) must be None or 'mtp'")
        return speculative_generate(model, prompts, max_new_tokens, temperature=temperature, top_k=top_k,
                                    top_p=top_p, seed=seed, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                    use_cache=use_cache, return_stats=return_stats)
    if not use_cache or return_stats:
        raise ValueError("use_cache=False and return_stats=True belong to speculative='mtp'")
    prompts = checked_prompts(prompts, max_new_tokens, model.cfg.max_position_embeddings)
    check_sampling(temperature, top_k, top_p)
    completions: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return completions

    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    tokens, padding_mask, position_ids = left_pad(prompts, pad_token_id, device)  # (B, P) each

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        logits = model(tokens, position_ids=position_ids, cache=cache, padding_mask=padding_mask).logits  # (B, P, V)
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        for step in tqdm(range(max_new_tokens), disable=not progress, desc="generate"):
            last = logits[:, -1]  # (B, V)
            check_finite_logits(last, step)
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
