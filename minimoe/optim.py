"""The one training step of every minimoe loop, and the pieces it is made of: AdamW's parameter groups, the
learning-rate schedule, and the finiteness checks that stop a run the moment its loss or gradient stops being a number.

Pretraining (``minimoe.train``), distillation (``minimoe.distill``), GRPO (``minimoe.rl.trainer``) and anything
later differ in their loss, not in their step: each builds its optimizer with ``make_optimizer`` and hands its loss
and the forward's ``ModelOutput`` to ``training_step``, which adds the model's auxiliary losses, steps the optimizer
on the one schedule (``warmup_cosine``), updates the routing bias and returns the step's metrics record. A change of
recipe happens in one place.

DeepSeek-V3 §4.2 trains with AdamW, β = (0.9, 0.95), weight decay 0.1 and gradient clipping at 1.0. Weight decay
pulls a weight towards 0; on a norm's gain (whose neutral value is 1), a bias, or an embedding row that a batch does
not use, that pull is not regularisation but drift, so by default they are not decayed (as in GPT-2, nanoGPT and
most open training code; the papers do not list which tensors they decay).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import nn

from minimoe.moe.balance import expert_load, max_violation

STEP_METRICS = ("loss", "balance_loss", "mtp_loss", "lr", "grad_norm", "expert_load", "max_vio")
"""The keys of the record ``training_step`` returns (every loop's history has these columns)."""


class StepConfig(Protocol):
    """What ``training_step`` reads from a loop's settings (``TrainConfig``, ``KDConfig``, ``GRPOConfig``, …)."""

    lr: float
    """Peak learning rate."""
    warmup: int
    """Steps of linear warm-up (``warmup_cosine``)."""
    steps: int
    """Steps of the run: the cosine reaches its floor on step ``steps − 1``."""
    min_lr_ratio: float
    """The floor, as a fraction of ``lr`` (1.0 = constant after the warm-up)."""
    grad_clip: float | None
    """Global gradient-norm clip; None = none."""


def param_groups(model: nn.Module, weight_decay: float, *, decay_embeddings: bool = False,
                 decay_norms_and_biases: bool = False) -> list[dict]:
    """AdamW parameter groups: ``weight_decay`` on weight matrices, 0 on the rest.

    A parameter of fewer than two dimensions is a norm gain or a bias; a parameter owned by an ``nn.Embedding`` is
    an embedding table. Frozen parameters (``requires_grad=False``) are left out.
    """
    if not (isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool)
            and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay ({weight_decay!r}) must be a finite number >= 0")
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            (decay if decay_norms_and_biases else no_decay).append(p)
        elif id(p) in embeddings:
            (decay if decay_embeddings else no_decay).append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, *, betas: tuple[float, float] = (0.9, 0.95),
                   weight_decay: float = 0.1, eps: float = 1e-8, decay_embeddings: bool = False,
                   decay_norms_and_biases: bool = False) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, grouped by ``param_groups`` (defaults: DeepSeek-V3 §4.2).

    Every hyper-parameter is an argument; invalid values raise ``ValueError`` naming the argument.
    """
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr ({lr!r}) must be a finite number > 0")
    if not (len(tuple(betas)) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"betas ({betas!r}) must be two numbers in [0, 1)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps ({eps!r}) must be a finite number > 0")
    groups = param_groups(model, weight_decay, decay_embeddings=decay_embeddings,
                          decay_norms_and_biases=decay_norms_and_biases)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas), eps=eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def warmup_cosine(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up, step s < ``warmup`` getting (s + 1) / warmup of ``lr``,
    then a cosine decay to ``min_lr_ratio · lr`` on step ``steps − 1`` (DeepSeek-V3 §4.2 decays 2.2e-4 to 2.2e-5:
    ratio 0.1; ``min_lr_ratio`` 1.0 keeps ``lr`` constant after the warm-up)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)  # 0 after warm-up, 1 on the last step
    min_lr = min_lr_ratio * lr
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def lr_at(step: int, cfg: StepConfig) -> float:
    """Learning rate of ``step`` (0-based) under ``cfg``: ``warmup_cosine`` with its ``lr``, ``warmup``, ``steps``
    and ``min_lr_ratio``."""
    return warmup_cosine(step, lr=cfg.lr, warmup=cfg.warmup, steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio)


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, out: Any, *, step: int,
                  cfg: StepConfig, hint: str = "") -> dict[str, Any]:
    """One optimizer step on ``loss``, the loop's own loss, computed from ``out = model(...)``; returns its record.

    1. L = ``loss`` + ``out.balance_loss`` + ``out.mtp_loss``: the balance loss the model's config asks for
       (DeepSeek-V3 Eq. (17)–(20); V2 Eq. (23)–(25)) and λ · L_MTP (DeepSeek-V3 Eq. (25)), each 0 when not asked.
    2. The learning rate of ``step``: ``lr_at(step, cfg)`` (linear warm-up, then cosine; DeepSeek-V3 §4.2).
    3. Backward, clip the global gradient norm to ``cfg.grad_clip``, AdamW step. A NaN or ±inf loss or gradient
       raises ``FloatingPointError`` naming ``step`` (and ``hint``) before any weight moves.
    4. The auxiliary-loss-free bias update with ``out.routing`` (DeepSeek-V3 §2.1.2; a no-op without a bias).

    The record (keys ``STEP_METRICS``) holds L as ``loss``, ``balance_loss``, ``mtp_loss``, ``lr``, the gradient norm
    before clipping, and per MoE layer of ``out.routing`` the expert load (shares, ``expert_load``) and its MaxVio;
    the loop adds its own loss under its own name (``lm_loss``, ``kd_loss``, ``policy_loss``) and records it.

    Shapes: loss () with graph; out.routing: one RoutingRecord per MoE layer, experts (B, T, K)
    -> expert_load: one list of E shares per MoE layer.
    """
    lr = lr_at(step, cfg)
    set_lr(optimizer, lr)
    total = loss + out.aux_loss.to(loss.device)  # aux_loss = balance_loss + mtp_loss
    check_finite_loss(total, step, hint)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = clip_gradients(model, cfg.grad_clip, step)
    optimizer.step()
    model.update_routing_bias(out.routing)
    loads = [expert_load(record.experts, model.cfg.n_routed_experts) for record in out.routing]  # per layer (E,)
    return {"loss": total.item(), "balance_loss": out.balance_loss.item(), "mtp_loss": out.mtp_loss.item(), "lr": lr,
            "grad_norm": grad_norm, "expert_load": [load.tolist() for load in loads],
            "max_vio": [max_violation(load).item() for load in loads]}


def check_finite_loss(loss: torch.Tensor, step: int, hint: str = "") -> None:
    """Raise ``FloatingPointError`` naming ``step`` when ``loss`` is NaN or ±inf (one host sync)."""
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(f"loss became {loss.detach().float().mean().item()} at step {step}"
                                 + (f": {hint}" if hint else ""))


def clip_gradients(model: nn.Module, max_norm: float | None, step: int) -> float:
    """Clip the global gradient norm of ``model``'s parameters to ``max_norm`` (None = no clipping); return the norm
    before clipping.

    A NaN or ±inf gradient raises ``FloatingPointError`` naming ``step`` and the first offending parameter, before
    the optimizer can spread it into every weight.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
    norm = nn.utils.clip_grad_norm_([p for _, p in named], math.inf if max_norm is None else max_norm)
    if not torch.isfinite(norm):
        bad = next((name for name, p in named if not torch.isfinite(p.grad).all()), "?")
        raise FloatingPointError(f"gradient norm became {norm.item()} at step {step} (first non-finite gradient: "
                                 f"{bad}); no update was applied")
    return norm.item()
