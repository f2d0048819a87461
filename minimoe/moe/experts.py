"""DeepSeekMoE: shared experts plus routed SwiGLU experts, with sort-based token dispatch.

DeepSeek-V3 §2.1.2, Eq. (12) (DeepSeek-V2 Eq. (20)):

    h'_t = u_t + Σ_{i≤N_s} FFN^(s)_i(u_t) + Σ_{i≤N_r} g_{i,t} FFN^(r)_i(u_t)

(the residual u_t is added by ``Block``). As in DeepSeek-V3's ``inference/model.py`` and transformers, the N_s shared
experts are one SwiGLU MLP of width N_s · moe_intermediate_size.

Dispatch: the N·K (token, expert) assignments are sorted by expert, so each expert runs once on one contiguous run of
its tokens (a loop over the experts that received tokens, or one ``grouped_mm`` per projection over all of them),
and the weighted outputs are added back to their tokens with ``index_add_``.
``naive_moe_forward`` runs every expert on every token instead; tests use it to prove the two equal.

Optionally (``capacity_factor``, off by default, as in DeepSeek-V3 which drops nothing), each expert takes at most
C = ⌈capacity_factor · N·K / E⌉ tokens and drops its lowest-affinity ones beyond that: DeepSeek-V2 §2.2.4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ModelConfig
from minimoe.moe.gate import Router, RoutingRecord

EXPERTS_IMPLS = ("auto", "loop", "grouped_mm")
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)  # torch ≥ 2.8 (CPU ≥ 2.9)
_GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class MLP(nn.Module):
    """SwiGLU feed-forward network ``w2(silu(w1 x) * w3 x)`` (w1 the SiLU branch, w3 the linear branch, w2 the
    output projection; HF gate_proj, up_proj, down_proj), as in DeepSeek's code.

    Shapes: x (..., d) -> (..., d).
    """

    def __init__(self, dim: int, inter: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, inter, bias=False)
        self.w2 = nn.Linear(inter, dim, bias=False)
        self.w3 = nn.Linear(dim, inter, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


Expert = MLP  # a routed expert is a (narrower) SwiGLU MLP: FFN^(r)_i


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
    if experts_impl not in EXPERTS_IMPLS:
        raise ValueError(f"experts_impl ({experts_impl!r}) must be one of {EXPERTS_IMPLS}")
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
    if impl != "loop":
        raise ValueError(f"impl ({impl!r}) must be 'loop' or 'grouped_mm'")
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
            out.index_add_(0, rows, experts[e](x.index_select(0, rows)) * gate_weights[start:start + size])
            start += size
    return out


class LocalDispatcher:
    """Dispatch on one process: every routed expert is here, tokens are sorted by expert (``dispatch_sorted``)."""

    def __call__(self, moe: DeepSeekMoE, u: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 keep: torch.Tensor | None) -> torch.Tensor:
        """Shapes: u (N, d), weights (N, K), indices (N, K), keep (N, K) bool or None -> (N, d)."""
        return dispatch_sorted(u, weights, indices, moe.experts, keep, resolve_impl(moe.experts_impl, u))

    def __repr__(self) -> str:
        return "LocalDispatcher()"


class DeepSeekMoE(nn.Module):
    """Shared + routed experts (DeepSeek-V3 Eq. (12)): ``router`` → ``dispatcher`` → ``experts`` (+ shared).

    ``forward(x)`` returns the layer's output; ``forward_routed(x, layer)`` also returns the ``RoutingRecord``
    (scores, selection scores, group mask, experts, gate weights, dropped assignments) that ``Transformer.forward``
    collects into ``ModelOutput.routing``. The module keeps nothing from one call to the next.

    Attributes, settable at any time:

    - ``capacity_factor`` (None = no dropping, the default and DeepSeek-V3's choice): in training mode each expert
      keeps at most ⌈capacity_factor · N·K / E⌉ tokens of the batch, dropping its lowest-affinity ones
      (``capacity_mask``); a dropped token still gets its other experts and the shared ones. DeepSeek-V2 §2.2.4 lets
      inference "flexibly decide whether to drop tokens"; minimoe drops nothing in eval mode.
    - ``experts_impl``: ``"loop"``, ``"grouped_mm"`` or ``"auto"`` (``grouped_mm`` on a GPU where torch offers
      it, else the loop: on a CPU the two measured the same, ``benchmarks/moe_dispatch.py``).
    - ``dispatcher``: how tokens reach their experts. ``LocalDispatcher()`` (default) sorts them by expert on this
      process; ``minimoe.moe.parallel.AllToAllDispatcher`` sends them over ``torch.distributed`` to the ranks that
      hold their experts (expert parallelism, ``minimoe.moe.parallel.shard_experts``).
    """

    def __init__(self, cfg: ModelConfig, capacity_factor: float | None = None, experts_impl: str = "auto",
                 dispatcher=None, n_local_experts: int | None = None) -> None:
        super().__init__()
        if not cfg.is_moe:
            raise ValueError("DeepSeekMoE needs n_routed_experts > 0")
        self.cfg = cfg
        self.router = Router(cfg)
        n_local = cfg.n_routed_experts if n_local_experts is None else n_local_experts
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(n_local))
        shared = cfg.n_shared_experts * cfg.moe_intermediate_size
        self.shared_experts = MLP(cfg.hidden_size, shared) if shared > 0 else None
        self.capacity_factor = capacity_factor
        self.experts_impl = experts_impl
        self.dispatcher = LocalDispatcher() if dispatcher is None else dispatcher

    @property
    def capacity_factor(self) -> float | None:
        return self._capacity_factor

    @capacity_factor.setter
    def capacity_factor(self, value: float | None) -> None:
        if value is not None and not value > 0:
            raise ValueError(f"capacity_factor ({value}) must be > 0 (or None for no token dropping)")
        self._capacity_factor = value

    @property
    def experts_impl(self) -> str:
        return self._experts_impl

    @experts_impl.setter
    def experts_impl(self, value: str) -> None:
        if value not in EXPERTS_IMPLS:
            raise ValueError(f"experts_impl ({value!r}) must be one of {EXPERTS_IMPLS}")
        self._experts_impl = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shapes: x (..., d) -> (..., d)."""
        return self.forward_routed(x)[0]

    def forward_routed(self, x: torch.Tensor, layer: int = 0) -> tuple[torch.Tensor, RoutingRecord]:
        """The layer's output and its routing (``layer`` is stored in the record).

        Shapes: x (..., d) -> (..., d) and a RoutingRecord whose tensors have x's leading shape, e.g. (B, T, ·).
        """
        lead = x.shape[:-1]
        u = x.reshape(-1, x.shape[-1])  # (N, d)
        sel = self.router(u)
        keep = None
        if self.capacity_factor is not None and self.training:
            keep = capacity_mask(sel.scores.detach().gather(1, sel.experts), sel.experts, self.cfg.n_routed_experts,
                                 self.capacity_factor)  # (N, K)
        h = self.dispatcher(self, u, sel.gate_weights, sel.experts, keep)  # (N, d)
        if self.shared_experts is not None:
            h = h + self.shared_experts(u)
        n_experts, k = sel.scores.shape[-1], sel.experts.shape[-1]
        record = RoutingRecord(
            layer=layer, scores=sel.scores.view(*lead, n_experts), selection_scores=sel.selection_scores.view(
                *lead, n_experts), group_mask=None if sel.group_mask is None else sel.group_mask.view(*lead, n_experts),
            experts=sel.experts.view(*lead, k), gate_weights=sel.gate_weights.view(*lead, k),
            dropped=None if keep is None else ~keep.view(*lead, k))
        return h.view(x.shape), record

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith(prefix + "gate.")]:  # checkpoints from before the rename
            state_dict[prefix + "router." + key.removeprefix(prefix + "gate.")] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def naive_moe_forward(moe: DeepSeekMoE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Reference for tests: every expert on every token, weighted by a dense (N, E) gate matrix (zeros off top-K,
    and off the assignments with ``keep`` False).

    Shapes: x (..., d), keep (N, K) bool -> (..., d).
    """
    lead = x.shape[:-1]
    u = x.reshape(-1, x.shape[-1])  # (N, d)
    sel = moe.router(u)
    weights, indices = sel.gate_weights, sel.experts
    if keep is not None:
        weights = weights * keep
    gates = torch.zeros(u.shape[0], len(moe.experts), dtype=u.dtype, device=u.device)
    gates = gates.scatter(1, indices, weights.to(u.dtype))  # (N, E): g_{i,t}, zero unless selected
    h = sum(gates[:, e:e + 1] * expert(u) for e, expert in enumerate(moe.experts))
    if moe.shared_experts is not None:
        h = h + moe.shared_experts(u)
    return h.view(*lead, -1)  # (..., d)
