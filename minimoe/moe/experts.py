"""DeepSeekMoE: shared experts plus routed SwiGLU experts, with sort-based token dispatch.

DeepSeek-V3 §2.1.2, Eq. (12) (DeepSeek-V2 Eq. (20)):

    h'_t = u_t + Σ_{i≤N_s} FFN^(s)_i(u_t) + Σ_{i≤N_r} g_{i,t} FFN^(r)_i(u_t)

(the residual u_t is added by ``Block``). As in DeepSeek-V3's ``inference/model.py`` and transformers, the N_s shared
experts are one SwiGLU MLP of width N_s · moe_intermediate_size.

Dispatch: the N·K (token, expert) assignments are sorted by expert, so each expert runs once on one contiguous slice
of tokens (a loop over experts, never over tokens), and the weighted outputs are scattered back with ``index_add_``.
``naive_moe_forward`` runs every expert on every token instead; tests use it to prove the two equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ModelConfig
from minimoe.moe.gate import Router


class MLP(nn.Module):
    """SwiGLU feed-forward network ``w2(silu(w1 x) * w3 x)`` (w1 gate, w2 down, w3 up), as in DeepSeek's code.

    Shapes: x (..., D) -> (..., D).
    """

    def __init__(self, dim: int, inter: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, inter, bias=False)
        self.w2 = nn.Linear(inter, dim, bias=False)
        self.w3 = nn.Linear(dim, inter, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


Expert = MLP  # a routed expert is a (narrower) SwiGLU MLP: FFN^(r)_i


def dispatch_sorted(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                    experts: nn.ModuleList) -> torch.Tensor:
    """Σ_i g_{i,t} FFN^(r)_i(u_t) by sorting assignments by expert (one call per expert that received tokens).

    Each expert's weighted output is added straight into the result with ``index_add_``: no (N·K, D) buffer is
    concatenated, which keeps the working set of one expert in cache (measured faster on a CPU).

    Shapes: x (N, D), weights (N, K), indices (N, K) -> (N, D).
    """
    k = indices.shape[1]
    flat_expert = indices.reshape(-1)  # (N·K,)
    order = flat_expert.argsort(stable=True)  # (N·K,) assignments grouped by expert
    token = order // k  # (N·K,) the token of each sorted assignment
    gate = weights.reshape(-1)[order].unsqueeze(-1).to(x.dtype)  # (N·K, 1) g_{i,t} in the same order
    counts = torch.bincount(flat_expert, minlength=len(experts)).tolist()  # tokens per expert
    out = torch.zeros_like(x)  # (N, D)
    start = 0
    for expert, n in zip(experts, counts):
        if n > 0:
            rows = token[start:start + n]  # (n_e,) the tokens sent to this expert
            out.index_add_(0, rows, expert(x[rows]) * gate[start:start + n])
        start += n
    return out


class DeepSeekMoE(nn.Module):
    """Shared + routed experts (DeepSeek-V3 Eq. (12)).

    After each forward, ``last_routing = (scores, indices)`` keeps the router's affinities (..., E) and the
    selected experts (..., K) with the input's leading shape, e.g. (B, T, E) and (B, T, K); ``scores`` keeps its
    graph so a balance loss (``minimoe.moe.balance``) can be added to the training loss.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.is_moe:
            raise ValueError("DeepSeekMoE needs n_routed_experts > 0")
        self.cfg = cfg
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.n_routed_experts))
        shared = cfg.n_shared_experts * cfg.moe_intermediate_size
        self.shared_experts = MLP(cfg.hidden_size, shared) if shared > 0 else None
        self.last_routing: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: x (..., D) -> (..., D)."""
        lead = x.shape[:-1]
        u = x.reshape(-1, x.shape[-1])  # (N, D)
        weights, indices, scores = self.gate(u)
        self.last_routing = (scores.view(*lead, -1), indices.view(*lead, -1))  # (..., E), (..., K)
        h = dispatch_sorted(u, weights, indices, self.experts)
        if self.shared_experts is not None:
            h = h + self.shared_experts(u)
        return h.view(*lead, -1)  # (..., D)


def naive_moe_forward(moe: DeepSeekMoE, x: torch.Tensor) -> torch.Tensor:
    """Reference for tests: every expert on every token, weighted by a dense (N, E) gate matrix (zeros off top-K).

    Shapes: x (..., D) -> (..., D).
    """
    lead = x.shape[:-1]
    u = x.reshape(-1, x.shape[-1])  # (N, D)
    weights, indices, _ = moe.gate(u)
    gates = torch.zeros(u.shape[0], len(moe.experts), dtype=u.dtype, device=u.device)
    gates = gates.scatter(1, indices, weights.to(u.dtype))  # (N, E): g_{i,t}, zero unless selected
    h = sum(gates[:, e:e + 1] * expert(u) for e, expert in enumerate(moe.experts))
    if moe.shared_experts is not None:
        h = h + moe.shared_experts(u)
    return h.view(*lead, -1)  # (..., D)
