"""Group Relative Policy Optimization: advantages, the k3 KL estimator and the clipped loss, as pure functions.

DeepSeekMath §4.1 (Eq. (3)–(4)) defines GRPO; Dr. GRPO (Liu et al. 2025) and DAPO (Yu et al. 2025) change how
per-token losses are aggregated. `grpo_loss` reproduces TRL 1.16 `GRPOTrainer._compute_loss` for four of its eight
loss types, "grpo", "bnpo", "dr_grpo" and "dapo" ("cispo", "sapo", "luspo" and "vespo" are not covered), with one
process, no gradient accumulation and one optimisation step per generation batch, so students can compare the
two line by line; `tests/test_rl_grpo.py` checks the equality against TRL's own code.

Shapes: B completions (G per prompt), T completion positions. Token tensors are (B, T); `mask` is 1 on real
completion tokens and 0 on padding.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
STD_EPS = 1e-4  # TRL's constant in (r - mean) / (std + eps)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Outcome-supervision advantages Â_i = (r_i − mean(r_group)) / (std + 1e-4) (DeepSeekMath §4.1.2).

    Completions are laid out group after group: rows [g·G, (g+1)·G) answer prompt g. The standard deviation is
    Bessel-corrected, as in TRL. `scale`: "group" divides by the group's std (GRPO), "batch" by the std of the whole
    batch, "none" does not divide (Dr. GRPO). A group of identical rewards gets zero advantage.

    Shapes:
        rewards: (B,) with B a multiple of G=group_size -> (B,)
    """
    rewards = torch.as_tensor(rewards)
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,); got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size ({group_size}) must be >= 1 and divide the number of rewards ({rewards.numel()})")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    grouped = rewards.view(-1, group_size)  # (B/G, G)
    advantages = rewards - grouped.mean(dim=1).repeat_interleave(group_size)  # (B,)
    if scale == "none":
        return advantages
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards)
    else:
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    return advantages / (std + STD_EPS)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate D_KL = π_ref/π_θ − log(π_ref/π_θ) − 1 >= 0 (DeepSeekMath Eq. (4), Schulman's k3).

    As a *value* it is an unbiased estimate of KL(π_θ ‖ π_ref) when tokens are sampled from π_θ; zero exactly where
    the log-probs agree. As a *loss term* its gradient is another matter: with r = π_ref/π_θ,
    ∇_θ k3 = (1 − r) ∇_θ log π_θ, and E_{o∼π_θ}[(1 − r) ∇ log π_θ] = ∇ Σ_o π_θ − Σ_o π_ref ∇ log π_θ
    = ∇_θ KL(π_ref ‖ π_θ): minimising k3 follows, in expectation, the gradient of KL(π_ref ‖ π_θ), not of
    KL(π_θ ‖ π_ref).

    Shapes:
        logprobs, ref_logprobs: (B, T) -> (B, T)
    """
    log_ratio = ref_logprobs - logprobs  # log(π_ref / π_θ)
    return torch.exp(log_ratio) - log_ratio - 1


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon_low: float = 0.2,
                      epsilon_high: float | None = None) -> torch.Tensor:
    """Per-token PPO/GRPO loss −min(ρ·Â, clip(ρ, 1 − ε_low, 1 + ε_high)·Â) (DeepSeekMath Eq. (3)).

    `epsilon_high` defaults to `epsilon_low` (symmetric PPO clip); DAPO's clip-higher raises it (e.g. 0.28).

    Shapes:
        ratio: (B, T), advantages: (B, 1) or (B, T) -> (B, T)
    """
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return -torch.min(ratio * advantages, clipped_ratio * advantages)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()


def _check_token_tensors(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T); got shape {tuple(mask.shape)}")
    for name, x in tensors.items():
        if x is not None and x.shape != mask.shape:
            raise ValueError(f"{name} must have the shape of mask {tuple(mask.shape)}; got {tuple(x.shape)}")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              ref_logprobs: torch.Tensor | None = None, beta: float = 0.0, epsilon_low: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "grpo",
              max_completion_length: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss (to minimise) and its statistics, aggregated as TRL 1.16's GRPOTrainer does.

    Per token: ℓ_{i,t} = −min(ρ_{i,t}Â_i, clip(ρ_{i,t}, 1 − ε_low, 1 + ε_high)Â_i) + β·D_KL (DeepSeekMath Eq. (3),
    KL by Eq. (4)), with ρ = exp(logprobs − old_logprobs). Aggregation over the masked tokens, by `loss_type`:
        "grpo"    (1/B) Σ_i (1/|o_i|) Σ_t ℓ_{i,t}      mean per sequence, then over sequences (Eq. (3))
        "bnpo"    Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|          token mean over the batch
        "dr_grpo" Σ_{i,t} ℓ_{i,t} / (B · L_max)       Dr. GRPO: a constant, L_max = max_completion_length
        "dapo"    Σ_{i,t} ℓ_{i,t} / Σ_i |o_i|          DAPO token-level normalisation
    In TRL, "dapo" divides by the active-token count of the whole generation batch (`num_items_in_batch`) while
    "bnpo" divides by that of the micro-batch; for one batch per step, as here, the two coincide.

    Statistics (floats, masked token means, as TRL logs them): "ratio" mean ρ; "clip_low" fraction with
    ρ < 1 − ε_low and Â < 0; "clip_high" fraction with ρ > 1 + ε_high and Â > 0; "clip_region" either; "kl" mean
    k3 KL, present when `ref_logprobs` is given.

    Shapes:
        logprobs, old_logprobs, mask, ref_logprobs: (B, T); advantages: (B,) or (B, T) -> loss (), stats
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}; got {loss_type!r}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got {beta}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError(f"beta ({beta}) != 0 needs ref_logprobs for the KL term")
    if loss_type == "dr_grpo" and (max_completion_length is None or max_completion_length < 1):
        raise ValueError("loss_type='dr_grpo' needs max_completion_length >= 1: Dr. GRPO divides by that constant, "
                         f"not by the batch's lengths; got {max_completion_length}")
    _check_token_tensors(mask, logprobs=logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1): one advantage for every token of a completion
    B, T = mask.shape
    if advantages.dim() != 2 or advantages.shape[0] != B or advantages.shape[1] not in (1, T):
        raise ValueError(f"advantages must be (B,) or (B, T) with (B, T) = {(B, T)}; got {tuple(advantages.shape)}")

    ratio = torch.exp(logprobs - old_logprobs)  # ρ_{i,t} = π_θ / π_old, (B, T)
    per_token_loss = clipped_surrogate(ratio, advantages, epsilon_low, epsilon_high)  # (B, T)
    per_token_kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else None  # (B, T)
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl

    masked_loss = per_token_loss * mask  # (B, T)
    if loss_type == "grpo":
        loss = (masked_loss.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "dr_grpo":
        loss = masked_loss.sum() / (B * max_completion_length)
    else:  # "bnpo" and "dapo"
        loss = masked_loss.sum() / mask.sum().clamp(min=1.0)

    with torch.no_grad():
        is_low = ((ratio < 1 - epsilon_low) & (advantages < 0)).to(mask.dtype)
        is_high = ((ratio > 1 + epsilon_high) & (advantages > 0)).to(mask.dtype)
        stats = {
            "ratio": _masked_mean(ratio, mask),
            "clip_low": _masked_mean(is_low, mask),
            "clip_high": _masked_mean(is_high, mask),
            "clip_region": _masked_mean(torch.maximum(is_low, is_high), mask),
        }
        if per_token_kl is not None:
            stats["kl"] = _masked_mean(per_token_kl, mask)
    return loss, stats


def reinforce_loss(logprobs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE (Williams, 1992): −(1/B) Σ_i r_i · log π_θ(o_i), with log π_θ(o_i) = Σ_t log π_θ(o_{i,t} | …).

    Its gradient is the unbiased Monte-Carlo estimate of −∇E[r]; unbiased but noisy, which the baseline and the
    group-relative advantage of GRPO reduce.

    Shapes:
        logprobs, mask: (B, T); rewards: (B,) -> ()
    """
    _check_token_tensors(mask, logprobs=logprobs)
    rewards = torch.as_tensor(rewards, dtype=logprobs.dtype)
    if rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must be (B,) with B = {mask.shape[0]}; got {tuple(rewards.shape)}")
    sequence_logprob = (logprobs * mask.to(logprobs.dtype)).sum(-1)  # (B,)
    return -(rewards * sequence_logprob).mean()


def reinforce_baseline_loss(logprobs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                            baseline: float | torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE with a baseline: r_i is replaced by r_i − b; b defaults to the batch mean reward.

    Any b that does not depend on o_i leaves the gradient unbiased and can shrink its variance; GRPO's group mean is
    this baseline computed per prompt.

    Shapes:
        logprobs, mask: (B, T); rewards: (B,); baseline: () or (B,) -> ()
    """
    rewards = torch.as_tensor(rewards, dtype=logprobs.dtype)
    baseline = rewards.mean() if baseline is None else torch.as_tensor(baseline, dtype=logprobs.dtype)
    return reinforce_loss(logprobs, rewards - baseline.detach(), mask)
