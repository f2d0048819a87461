"""DeepSeekMoE: shared experts plus routed SwiGLU experts (DeepSeek-V3 §2.1.2, Eq. (12)–(16); DeepSeek-V2 §2.2).

    h'_t = u_t + Σ_{i≤N_s} FFN^(s)_i(u_t) + Σ_{i≤N_r} g_{i,t} FFN^(r)_i(u_t)                      Eq. (12)
    g_{i,t} = g'_{i,t} / Σ_j g'_{j,t}                                                            Eq. (13)
    g'_{i,t} = s_{i,t} if s_{i,t} + b_i ∈ Topk({s_{j,t} + b_j | 1 ≤ j ≤ N_r}, K_r), else 0        Eq. (14), (16)
    s_{i,t} = Sigmoid(u_tᵀ e_i)                                                                  Eq. (15)

(V2: softmax scores, no bias, no renormalisation; both scale g by ``routed_scaling_factor``.) ``naive_moe_forward``
is these lines as written, every routed expert on every token: the reference. ``DeepSeekMoE`` computes the same with
the router (``minimoe.moe.gate``) and a dispatcher that sorts tokens by expert (``minimoe.moe.dispatch``, the fast
path; tests/test_moe_dispatch.py proves the two equal). The residual u_t is added by ``Block``. As in DeepSeek-V3's
``inference/model.py`` and transformers, the N_s shared experts are one SwiGLU MLP of width N_s · moe_intermediate_size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ModelConfig
from minimoe.moe.dispatch import EXPERTS_IMPLS, LocalDispatcher, capacity_mask
from minimoe.moe.gate import NORM_EPS, Router, RoutingRecord, affinity_scores, select_experts


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


def naive_moe_forward(moe: DeepSeekMoE, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: Eq. (15), (16), (14), (13), (12) line by line, every routed expert on every token, with a
    dense (N, E) gate matrix. ``keep`` (N, K) False zeroes an assignment the capacity dropped (after Eq. (13), as
    ``DeepSeekMoE`` does).

    Shapes: x (..., d), keep (N, K) bool or None -> (..., d), without the residual u_t.
    """
    cfg, router = moe.cfg, moe.router
    u = x.reshape(-1, x.shape[-1])  # (N, d): u_t
    s = affinity_scores(F.linear(u.float(), router.weight.float()), cfg.scoring_func)  # Eq. (15): (N, E) s_{i,t}
    chosen = select_experts(s, cfg.num_experts_per_tok, topk_method=cfg.topk_method, n_group=cfg.n_group,
                            topk_group=cfg.topk_group, bias=router.bias).experts  # Eq. (16): Topk of s + b, (N, K)
    g = torch.zeros_like(s).scatter(1, chosen, s.gather(1, chosen))  # Eq. (14): g'_{i,t} = s_{i,t} if chosen, (N, E)
    if cfg.norm_topk_prob:
        g = g / (g.sum(dim=-1, keepdim=True) + NORM_EPS)  # Eq. (13): g_{i,t} = g'_{i,t} / Σ_j g'_{j,t}
    g = g * cfg.routed_scaling_factor
    if keep is not None:
        g = g * torch.zeros_like(g, dtype=torch.bool).scatter(1, chosen, keep)  # dropped assignments weigh 0
    h = sum(g[:, i:i + 1].to(u.dtype) * expert(u) for i, expert in enumerate(moe.experts))  # Σ_i g_{i,t} FFN^(r)_i
    if moe.shared_experts is not None:
        h = h + moe.shared_experts(u)  # Σ_i FFN^(s)_i(u_t)
    return h.view(x.shape)  # Eq. (12), the residual u_t left to Block


class DeepSeekMoE(nn.Module):
    """Shared + routed experts (DeepSeek-V3 Eq. (12)): ``router`` → ``dispatcher`` → ``experts`` (+ shared); the
    fast path of ``naive_moe_forward``.

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
        u = x.reshape(-1, x.shape[-1])  # (N, d): u_t
        sel = self.router(u)  # Eq. (13)–(16): s_{i,t}, the K experts, g_{i,t}
        keep = None
        if self.capacity_factor is not None and self.training:
            keep = capacity_mask(sel.scores.detach().gather(1, sel.experts), sel.experts, self.cfg.n_routed_experts,
                                 self.capacity_factor)  # (N, K)
        h = self.dispatcher(self, u, sel.gate_weights, sel.experts, keep)  # (N, d): Σ_i g_{i,t} FFN^(r)_i(u_t)
        if self.shared_experts is not None:
            h += self.shared_experts(u)  # + Σ_i FFN^(s)_i(u_t): Eq. (12), the residual left to Block
        return h.view(x.shape), RoutingRecord.of(sel, x.shape[:-1], layer, None if keep is None else ~keep)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith(prefix + "gate.")]:  # checkpoints from before the rename
            state_dict[prefix + "router." + key.removeprefix(prefix + "gate.")] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
