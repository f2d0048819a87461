"""Rollouts for GRPO: G sampled completions per prompt, and the per-token log-probabilities of completions.

DeepSeekMath §4.1 (Eq. (3)): for each question q, sample a group of G outputs {o_1, …, o_G} from π_old, then score
every token of every output under π_θ, π_old and π_ref. `sample_groups` does the sampling with the latent cache
(`minimoe.generate`: one prefill, then one-token decode steps); `completion_logprobs` does the scoring with one full
forward over prompt + completion, and `score_completions` also keeps that forward's `ModelOutput` (routing, balance
and MTP losses), which the training step needs to keep an MoE policy balanced during RL.

Layout, as in `minimoe.rl.grpo.group_advantages`: row g·G + j is the j-th completion of prompt g. Prompts are
left-padded (B, P) so that every completion starts in the same column; completions are right-padded (B, T), and the
completion mask is 1 on real completion tokens (up to and including eos) and 0 on padding.

Shapes: B = n_prompts · G completions, P prompt columns, T completion columns, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.generate import generate
from minimoe.model import ModelOutput
from minimoe.sampling import left_pad, positions
from minimoe.tasks.tokenizer import CharTokenizer


@dataclass
class Rollout:
    """A batch of sampled completions, G per prompt, ready to be scored and trained on.

    Shapes:
        prompt_ids (B, P) long, left-padded; prompt_mask (B, P) bool, True on real prompt tokens;
        completion_ids (B, T) long, right-padded; completion_mask (B, T) float, 1 on real completion tokens;
        completions: B decoded strings (without eos); group_size: G, with B a multiple of G.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completions: list[str]
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        """Completion lengths |o_i| in tokens, eos included. Shapes: (B,)."""
        return self.completion_mask.sum(-1)

    def select_groups(self, keep: torch.Tensor) -> Rollout:
        """The rollout restricted to the groups where `keep` is True (DAPO's dynamic sampling filter).

        Shapes: keep (B/G,) bool -> a Rollout of keep.sum()·G rows.
        """
        rows = keep.repeat_interleave(self.group_size)  # (B,)
        index = rows.nonzero().flatten().tolist()
        return Rollout(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows],
                       self.completion_mask[rows], [self.completions[i] for i in index], self.group_size)


def concat_rollouts(rollouts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout from several with the same group size, re-padded to common widths.

    Shapes: rollouts with B_1, B_2, … rows -> a Rollout of B_1 + B_2 + … rows.
    """
    if len({r.group_size for r in rollouts}) != 1:
        raise ValueError("rollouts must be a non-empty list sharing one group_size")
    if len(rollouts) == 1:
        return rollouts[0]
    prompts = [ids[m].tolist() for r in rollouts for ids, m in zip(r.prompt_ids, r.prompt_mask)]
    outputs = [ids[m.bool()].tolist() for r in rollouts for ids, m in zip(r.completion_ids, r.completion_mask)]
    prompt_ids, prompt_mask, _ = left_pad(prompts, pad_id)
    completion_ids, completion_mask = pad_right(outputs, pad_id)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   [c for r in rollouts for c in r.completions], rollouts[0].group_size)


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists of different lengths, padding on the right. Shapes: -> ids (B, T), mask (B, T) float."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), width)
    for row, s in enumerate(sequences):
        ids[row, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[row, :len(s)] = 1.0
    return ids, mask


def sample_groups(model: nn.Module, tokenizer: CharTokenizer, prompts: Sequence[Sequence[int]], group_size: int,
                  max_new_tokens: int, *, temperature: float = 1.0, seed: int | None = None) -> Rollout:
    """Sample `group_size` completions of each prompt in one batched generation with the latent cache.

    Each row stops after eos (kept in the completion and in its mask) or after `max_new_tokens` tokens (then it
    has no eos: a truncated completion). `temperature` 0 is greedy, so all G copies agree.

    Shapes:
        prompts: n_prompts token lists (bos included, any lengths) -> Rollout with B = n_prompts·G rows.
    """
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size ({group_size!r}) must be a positive integer")
    if not prompts:
        raise ValueError("prompts must hold at least one prompt")
    repeated = [list(p) for p in prompts for _ in range(group_size)]  # rows g·G … g·G + G − 1 share prompt g
    with model.attention_mode("absorbed" if model.cfg.attention_type == "mla" else "naive"):  # the latent cache
        outputs = generate(model, repeated, max_new_tokens, temperature=temperature, seed=seed,
                           eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    prompt_ids, prompt_mask, _ = left_pad(repeated, tokenizer.pad_id)
    completion_ids, completion_mask = pad_right(outputs, tokenizer.pad_id)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, tokenizer.decode_batch(outputs),
                   group_size)


class Scores(NamedTuple):
    """What `score_completions` returns.

    Shapes: logprobs (B, T), entropy (B, T), both 0 on padding; output: the forward's `ModelOutput` over the
    (B, P + T) tokens (its routing, balance_loss and mtp_loss go to ``minimoe.optim.training_step``).
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor
    output: ModelOutput


def completion_logprobs(model: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor, *, temperature: float = 1.0,
                        with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log π(o_{i,t} | q_i, o_{i,<t}) for every completion token, from one forward over prompt + completion.

    Padding is hidden from attention and each row's positions start at 0 on its first real prompt token, so a row
    scores exactly as it would alone. Logits are divided by `temperature` first, as TRL does, so that the ratio in
    the GRPO loss compares the distributions the completions were sampled from. Values at padded positions are 0.
    With `with_entropy`, also returns the entropy of π(· | q_i, o_{i,<t}) at each position (0 on padding). Gradients
    flow unless called under `torch.no_grad()` (old and reference log-probs are computed that way).

    Shapes:
        prompt_ids, prompt_mask: (B, P); completion_ids, completion_mask: (B, T) -> logprobs (B, T)
        [, entropy (B, T)]
    """
    scores = score_completions(model, Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, [], 1),
                               temperature=temperature)
    return (scores.logprobs, scores.entropy) if with_entropy else scores.logprobs


def score_completions(model: nn.Module, rollout: Rollout, *, temperature: float = 1.0) -> Scores:
    """`completion_logprobs` of a `Rollout`, with the entropy of every position and the forward's `ModelOutput`.

    Shapes: a Rollout of B rows, P prompt and T completion columns -> logprobs (B, T), entropy (B, T).
    """
    prompt_ids, prompt_mask = rollout.prompt_ids, rollout.prompt_mask
    completion_ids, completion_mask = rollout.completion_ids, rollout.completion_mask
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature ({temperature!r}) must be a finite number > 0 to score completions")
    if prompt_ids.shape[0] != completion_ids.shape[0] or prompt_mask.shape != prompt_ids.shape \
            or completion_mask.shape != completion_ids.shape:
        raise ValueError(f"need prompt_ids/prompt_mask (B, P) and completion_ids/completion_mask (B, T) with one B; "
                         f"got {tuple(prompt_ids.shape)}, {tuple(prompt_mask.shape)}, "
                         f"{tuple(completion_ids.shape)}, {tuple(completion_mask.shape)}")
    device = next(model.parameters()).device
    P = prompt_ids.shape[1]
    tokens = torch.cat([prompt_ids, completion_ids], dim=1).to(device)  # (B, P + T)
    real = torch.cat([prompt_mask.bool(), completion_mask.bool()], dim=1).to(device)  # (B, P + T)
    position_ids = positions(real)  # (B, P + T): 0 on each row's first real prompt token
    output = model(tokens, position_ids=position_ids, padding_mask=real)
    logits = output.logits[:, P - 1:-1]  # (B, T, V): position P − 1 + t predicts o_t
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # at least float32
    log_probs = F.log_softmax(logits, dim=-1)  # (B, T, V)
    mask = completion_mask.to(device=device, dtype=log_probs.dtype)
    token_logprobs = log_probs.gather(-1, completion_ids.to(device)[..., None]).squeeze(-1) * mask  # (B, T)
    entropy = -(log_probs.exp() * log_probs).sum(-1) * mask  # (B, T)
    return Scores(token_logprobs, entropy, output)
