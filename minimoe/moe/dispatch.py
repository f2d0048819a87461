"""The fast path of DeepSeekMoE's routed experts: token dispatch sorted by expert.

``DeepSeekMoE`` (``minimoe.moe.experts``) computes Σ_i g_{i,t} FFN^(r)_i(u_t) of DeepSeek-V3 Eq. (12) through a
dispatcher. Running every expert on every token (``naive_moe_forward``, the reference) wastes E/K of the work; here
the N·K (token, expert) assignments are sorted by expert, so each expert runs once on one contiguous run of its
tokens (a loop over the experts that received tokens, or one ``grouped_mm`` per projection over all of them), and
the weighted outputs are added back to their tokens with ``index_add_``. tests/test_moe_dispatch.py proves the two equal,
outputs and gradients, with and without token dropping.

Optionally (``capacity_factor``, off by default, as in DeepSeek-V3 which drops nothing), each expert takes at most
C = ⌈capacity_factor · N·K / E⌉ tokens and drops its lowest-affinity ones beyond that: DeepSeek-V2 §2.2.4.
Expert parallelism (``minimoe.moe.parallel``) reuses ``sort_by_expert`` and ``run_experts``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EXPERTS_IMPLS = ("auto", "loop", "grouped_mm")
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)  # torch ≥ 2.8 (CPU ≥ 2.9)
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def capacity_mask(affinity: torch.Tensor, indices: torch.Tensor, n_experts: int,
                  capacity_factor: float) -> torch.Tensor:
    """Which assignments fit in their expert's capacity C = ⌈capacity_factor · N·K / E⌉ (DeepSeek-V2 §2.2.4).

    Each expert keeps its C highest-affinity assignments and drops the rest (ties: the earlier token stays).
    DeepSeek-V2 applies the capacity per device; with one expert per device the two coincide.

    Shapes: affinity (N, K) s_{i,t} of the selected experts, indices (N, K) -> keep (N, K) bool.
    """
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor ({capacity_factor}) must be > 0 (or None for no token dropping)")
    capacity = math.ceil(capacity_factor * indices.numel() / n_experts)
    flat_expert = indices.reshape(-1)  # (N·K,)
    by_affinity = affinity.reshape(-1).argsort(descending=True, stable=True)  # (N·K,)
    order = by_affinity[flat_expert[by_affinity].argsort(stable=True)]  # (N·K,) by expert, best affinity first
    counts = torch.bincount(flat_expert, minlength=n_experts)  # (E,)
    first = counts.cumsum(0) - counts  # (E,) where each expert's run starts in ``order``
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - first[flat_expert[order]]
    return (rank < capacity).view(indices.shape)  # (N, K)


def sort_by_expert(indices: torch.Tensor, n_experts: int,
                   keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Group the flattened assignments by expert, leaving out those with ``keep`` False.

    Dropped assignments get the sentinel expert E, which sorts last and is cut off.

    Shapes: indices (N, K), keep (N, K) bool -> order (M,) into the N·K flattened assignments, counts (E,) long,
    with M = counts.sum() kept assignments.
    """
    flat_expert = indices.reshape(-1)  # (N·K,)
    if keep is not None:
        flat_expert = flat_expert.masked_fill(~keep.reshape(-1), n_experts)
    counts = torch.bincount(flat_expert, minlength=n_experts + 1)[:n_experts]  # (E,)
    order = flat_expert.argsort(stable=True)  # (N·K,)
    if keep is not None:
        order = order[:int(counts.sum())]  # (M,): cut the dropped ones off (a host sync only when dropping)
    return order, counts


def grouped_mm_supported(x: torch.Tensor) -> bool:
    """Whether this torch offers ``grouped_mm`` for x's device and dtype (CPU: float32/bfloat16/float16;
    CUDA: bfloat16 on compute capability ≥ 8.0, as its documentation states).

    Shapes: x (N, d) -> bool.
    """
    if _grouped_mm is None:
        return False
    if x.is_cuda:
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (8, 0)
    return x.device.type == "cpu" and x.dtype in _GROUPED_MM_DTYPES


def resolve_impl(experts_impl: str, x: torch.Tensor) -> str:
    """The ``run_experts`` implementation for x: ``"auto"`` is ``grouped_mm`` on a GPU that offers it, else the loop.

    Shapes: x (N, d) -> a name.
    """
    if experts_impl == "auto":
        return "grouped_mm" if x.is_cuda and grouped_mm_supported(x) else "loop"
    if experts_impl == "grouped_mm" and not grouped_mm_supported(x):
        raise ValueError(f"experts_impl 'grouped_mm' is not offered by torch {torch.__version__} for "
                         f"{x.dtype} on {x.device.type}; use 'loop' or 'auto'")
    return experts_impl


def run_experts(x_sorted: torch.Tensor, counts: torch.Tensor, experts: nn.ModuleList,
                impl: str = "loop") -> torch.Tensor:
    """FFN^(r)_i on each expert's contiguous slice of the sorted tokens.

    ``"loop"``: one call per expert that received tokens; ``split`` makes the slices views of one buffer, so the
    backward pass concatenates their gradients once (slicing would build one M-row zero gradient per expert).
    ``"grouped_mm"``: three grouped matrix products over the experts' weights stacked into (E, ·, ·) tensors
    (stacking copies all routed weights at every call).

    Shapes: x_sorted (M, d), counts (E,) with counts.sum() = M -> (M, d).
    """
    if impl == "grouped_mm":
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's rows
        w1, w2, w3 = (torch.stack([getattr(e, w).weight for e in experts]) for w in ("w1", "w2", "w3"))
        act = _grouped_mm(x_sorted, w1.mT, offs=offs)  # (M, I)
        lin = _grouped_mm(x_sorted, w3.mT, offs=offs)  # (M, I)
        return _grouped_mm(F.silu(act) * lin, w2.mT, offs=offs)  # (M, d)
    assert impl == "loop", impl
    outputs = [expert(rows) for expert, rows in zip(experts, x_sorted.split(counts.tolist())) if len(rows) > 0]
    return torch.cat(outputs) if outputs else torch.zeros_like(x_sorted)  # (M, d)


def dispatch_sorted(x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, experts: nn.ModuleList,
                    keep: torch.Tensor | None = None, impl: str = "loop") -> torch.Tensor:
    """Σ_i g_{i,t} FFN^(r)_i(u_t) with the assignments sorted by expert; assignments with ``keep`` False are skipped.

    The loop adds each expert's weighted output straight into the result, so one expert's rows stay in cache
    (measured faster on a CPU than concatenating an (N·K, d) buffer). Its rows are gathered one expert at a time,
    except when a gradient is needed: then all at once, so that the backward pass scatters dL/dx once instead of
    building one (N, d) zero gradient per expert. Without gradients only the experts that received tokens are
    visited (decoding one token touches K of E experts; splitting into E views cost as much as the experts).

    ~85% of the forward is the experts' matrix products; the profile, the idle measurements and the changes tried
    (and why they were not kept) are in ``benchmarks/moe_dispatch.py``'s docstring.

    Shapes: x (N, d), weights (N, K), indices (N, K), keep (N, K) bool -> (N, d).
    """
    k = indices.shape[1]
    order, counts = sort_by_expert(indices, len(experts), keep)  # (M,), (E,)
    token = order // k  # (M,) the token of each sorted assignment
    gate_weights = weights.reshape(-1)[order].unsqueeze(-1).to(x.dtype)  # (M, 1) g_{i,t} in the same order
    out = torch.zeros_like(x)  # (N, d)
    if impl != "loop":
        y_sorted = run_experts(x.index_select(0, token), counts, experts, impl)  # (M, d)
        return out.index_add_(0, token, y_sorted * gate_weights)
    sizes = counts.tolist()
    if torch.is_grad_enabled() and (x.requires_grad or gate_weights.requires_grad):
        gathered = x.index_select(0, token).split(sizes)  # views of one buffer: one gradient scatter
        for e, (expert, rows, g) in enumerate(zip(experts, token.split(sizes), gate_weights.split(sizes))):
            if len(rows) > 0:
                out.index_add_(0, rows, expert(gathered[e]) * g)
        return out
    start = 0  # no gradient: plain slices, and only the experts that received tokens are visited
    for e, size in enumerate(sizes):
        if size:
            rows = token[start:start + size]  # (n_e,)
            out.index_add_(0, rows, experts[e](x.index_select(0, rows)).mul_(gate_weights[start:start + size]))
            start += size
    return out


class LocalDispatcher:
    """Dispatch on one process: every routed expert is here, tokens are sorted by expert (``dispatch_sorted``)."""

    def __call__(self, moe, u: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 keep: torch.Tensor | None) -> torch.Tensor:
        """Shapes: u (N, d), weights (N, K), indices (N, K), keep (N, K) bool or None -> (N, d)."""
        return dispatch_sorted(u, weights, indices, moe.experts, keep, resolve_impl(moe.experts_impl, u))

    def __repr__(self) -> str:
        return "LocalDispatcher()"
