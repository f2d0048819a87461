"""The router of DeepSeekMoE: affinity scores, (group-limited) top-k selection and gate values.

DeepSeek-V2 §2.2 (Eq. (21)–(22)) scores experts with a softmax and keeps the top-K; its device-limited routing
first keeps the ``topk_group`` groups whose best expert scores highest. DeepSeek-V3 §2.1.2 (Eq. (13)–(16)) scores
with a sigmoid, *selects* with ``scores + bias`` (auxiliary-loss-free balancing), ranks groups by the sum of their
two best biased scores, and takes the gate values from the unbiased scores, normalised over the selected experts.

The maths is in pure functions (``affinity_scores``, ``group_mask``, ``select_experts``) so notebooks and assignments
can call them; ``Router`` only holds the weights. Which scheme selects how is the registry
``minimoe.config.ROUTING_SCHEMES`` (``topk_method``). Semantics follow Hugging Face transformers 5.x
(``DeepseekV2TopkRouter``, ``DeepseekV3TopkRouter``) and DeepSeek-V3 ``inference/model.py`` ``Gate``:

- Experts outside the kept groups are masked with ``-inf`` before the final top-k, as in DeepSeek-V3's code and
  ``DeepseekV3TopkRouter``. ``DeepseekV2TopkRouter`` masks them with ``0.0`` instead (transformers 5); its scores
  are softmax probabilities, strictly positive, and the config guarantees the kept groups hold at least K experts,
  so both masks select the same experts. (With ``0.0`` and *biased* sigmoid scores, which can be negative, a masked
  expert could win; that is why the V3 code uses ``-inf``.)
- ``norm_topk_prob`` divides by ``sum + 1e-20`` (``DeepseekV3TopkRouter``). ``DeepseekV2TopkRouter`` never
  normalises whatever its config says; the published V2 configs set ``norm_topk_prob=False`` so they agree.
- Scores are computed in float32 whatever the model dtype, as both implementations do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minimoe.config import ROUTING_SCHEMES, ModelConfig

NORM_EPS = 1e-20  # DeepseekV3TopkRouter: topk_weights / (topk_weights.sum() + 1e-20)


def affinity_scores(logits: torch.Tensor, scoring_func: str) -> torch.Tensor:
    """Token-to-expert affinities s_{i,t}: softmax (DeepSeek-V2 Eq. (22)) or sigmoid (DeepSeek-V3 Eq. (15)).

    Shapes: logits (N, E) -> scores (N, E), float32.
    """
    logits = logits.float()
    if scoring_func == "softmax":
        return logits.softmax(dim=-1)
    if scoring_func == "sigmoid":
        return logits.sigmoid()
    raise ValueError(f"scoring_func ({scoring_func!r}) must be 'softmax' or 'sigmoid'")


GROUP_SCORES = {  # how a group of experts is ranked, (N, n_group, experts_per_group) -> (N, n_group)
    "max": lambda grouped: grouped.max(dim=-1).values,  # its best expert (DeepSeek-V2 §2.2.2)
    "top2": lambda grouped: grouped.topk(2, dim=-1).values.sum(dim=-1),  # its two best (V3, K_r / M = 8 / 4 = 2)
}


def group_mask(choice: torch.Tensor, n_group: int, topk_group: int, group_score: str) -> torch.Tensor:
    """Which experts lie in one of the ``topk_group`` best groups of each token.

    A group is a device (DeepSeek-V2 §2.2.2, device-limited routing) or a node (DeepSeek-V3 §2.1.2, node-limited
    routing). ``group_score`` names how a group is ranked (``GROUP_SCORES``): "max" by its best expert (V2), "top2"
    by the sum of its two best experts (V3).

    Shapes: choice (N, E) -> mask (N, E) bool, True = the expert may be selected.
    """
    if group_score not in GROUP_SCORES:
        raise ValueError(f"group_score ({group_score!r}) must be one of {tuple(GROUP_SCORES)}")
    n_tokens, n_experts = choice.shape
    grouped = choice.view(n_tokens, n_group, n_experts // n_group)  # (N, n_group, experts_per_group)
    kept = GROUP_SCORES[group_score](grouped).topk(topk_group, dim=-1).indices  # (N, topk_group)
    mask = torch.zeros(n_tokens, n_group, dtype=torch.bool, device=choice.device).scatter_(1, kept, True)
    return mask.unsqueeze(-1).expand_as(grouped).reshape(n_tokens, n_experts)  # (N, E)


@dataclass
class Selection:
    """What the router decided for N tokens: everything a balance loss, a bias update or a plot needs.

    Shapes: scores (N, E) float32 s_{i,t} (keeps its graph); selection_scores (N, E) float32, what top-k ranked
    (s, + b for ``noaux_tc``, −inf outside the kept groups); group_mask (N, E) bool or None (no group limit);
    experts (N, K) long, best first; gate_weights (N, K) float32 g_{i,t} × ``routed_scaling_factor``.
    """

    scores: torch.Tensor
    selection_scores: torch.Tensor
    group_mask: torch.Tensor | None
    experts: torch.Tensor
    gate_weights: torch.Tensor


@dataclass
class RoutingRecord(Selection):
    """The routing of one MoE layer in one forward pass (``ModelOutput.routing`` holds one per MoE layer): the
    router's ``Selection`` with the tokens' leading shape, the ``layer`` it belongs to and the assignments the
    capacity ``dropped`` (True = dropped; None when no capacity applied).

    Shapes: scores, selection_scores (B, T, E) float32 (scores keep their graph, for the balance losses);
    group_mask (B, T, E) bool or None; experts (B, T, K) long; gate_weights (B, T, K) float32; dropped (B, T, K).
    """

    layer: int = 0
    dropped: torch.Tensor | None = None

    @classmethod
    def of(cls, sel: Selection, lead: torch.Size, layer: int, dropped: torch.Tensor | None) -> RoutingRecord:
        """``sel`` of N = prod(lead) tokens, every tensor viewed as (*lead, ·). Shapes: (N, ·) -> (*lead, ·)."""
        def view(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.view(*lead, t.shape[-1])
        return cls(view(sel.scores), view(sel.selection_scores), view(sel.group_mask), view(sel.experts),
                   view(sel.gate_weights), layer, view(dropped))


def select_experts(scores: torch.Tensor, k: int, *, topk_method: str = "greedy", n_group: int = 1,
                   topk_group: int = 1, bias: torch.Tensor | None = None, norm_topk_prob: bool = False,
                   routed_scaling_factor: float = 1.0) -> Selection:
    """Select K experts per token and their gate values g_{i,t}; return every intermediate (``Selection``).

    ``topk_method`` names a scheme of ``minimoe.config.ROUTING_SCHEMES``: ``"greedy"``, top-K of the scores
    (DeepSeek-V2 Eq. (21)); ``"group_limited_greedy"``, top-K inside the ``topk_group`` groups with the highest max
    score (DeepSeek-V2 §2.2.2); ``"noaux_tc"``, selection by ``scores + bias`` inside the groups with the highest
    top-2 sum, gate values from the unbiased scores (DeepSeek-V3 Eq. (16)).

    Then, if ``norm_topk_prob``, g = g' / Σ g' over the selected (DeepSeek-V3 Eq. (13)); finally g ×
    ``routed_scaling_factor``.

    Shapes: scores (N, E), bias (E,) -> Selection (experts (N, K) sorted by selection score).
    """
    n_experts = scores.shape[-1]
    if not 0 < k <= n_experts:
        raise ValueError(f"k ({k}) must be between 1 and the number of experts ({n_experts})")
    if n_experts % n_group != 0:
        raise ValueError(f"the number of experts ({n_experts}) must be divisible by n_group ({n_group})")
    if topk_method not in ROUTING_SCHEMES:
        raise ValueError(f"topk_method ({topk_method!r}) must be one of {tuple(ROUTING_SCHEMES)}")
    scheme = ROUTING_SCHEMES[topk_method]
    choice = scores + bias.float() if scheme.selection_bias and bias is not None else scores  # Eq. (16): s + b
    allowed = None
    if scheme.group_score is not None and n_group > 1:
        allowed = group_mask(choice, n_group, topk_group, scheme.group_score)  # (N, E)
        choice = choice.masked_fill(~allowed, float("-inf"))
    indices = choice.topk(k, dim=-1).indices  # (N, K)
    weights = scores.gather(-1, indices)  # (N, K): g' from the unbiased scores
    if norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + NORM_EPS)  # Eq. (13)
    return Selection(scores, choice, allowed, indices, weights * routed_scaling_factor)


class Router(nn.Module):
    """The router of one DeepSeekMoE layer: ``weight`` holds the expert centroids e_i, ``bias`` the V3 selection bias.

    ``bias`` (float32, = HF ``e_score_correction_bias``) exists only when the routing scheme selects with a bias
    (``cfg.router_has_bias``: ``noaux_tc``); it is a buffer,
    not a parameter: training moves it with the auxiliary-loss-free update (``minimoe.moe.balance``), not by gradient.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not cfg.is_moe:
            raise ValueError("Router needs n_routed_experts > 0")
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        nn.init.normal_(self.weight, std=cfg.initializer_range)
        if cfg.router_has_bias:
            self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> Selection:
        """Route each token: affinities, selection and gate values (``select_experts``).

        Shapes: x (N, d) -> Selection: gate_weights (N, K) float32 (× routed_scaling_factor), experts (N, K),
        scores and selection_scores (N, E) float32, group_mask (N, E) or None.
        """
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())  # (N, E): u_t^T e_i
        scores = affinity_scores(logits, cfg.scoring_func)
        return select_experts(scores, cfg.num_experts_per_tok, topk_method=cfg.topk_method, n_group=cfg.n_group,
                              topk_group=cfg.topk_group, bias=self.bias, norm_topk_prob=cfg.norm_topk_prob,
                              routed_scaling_factor=cfg.routed_scaling_factor)

    def extra_repr(self) -> str:
        cfg = self.cfg
        return (f"experts={cfg.n_routed_experts}, k={cfg.num_experts_per_tok}, {cfg.scoring_func}, "
                f"{cfg.topk_method}, groups={cfg.topk_group}/{cfg.n_group}")
