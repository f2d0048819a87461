"""The routing schemes of DeepSeekMoE, in one registry: ``topk_method`` names an entry of ``ROUTING_SCHEMES``.

A scheme says how the router turns affinities s_{i,t} into a selection (``minimoe.moe.gate.select_experts``): whether
it selects with a bias, ``s + b`` (the auxiliary-loss-free balancing of DeepSeek-V3 Eq. (16)), and how a group of
experts is ranked when routing is limited to ``topk_group`` of ``n_group`` groups (a group-score function of
``minimoe.moe.gate.GROUP_SCORES``). Everything else reads the scheme, never the name: the config's checks, whether
the ``Router`` holds a bias (``ModelConfig.router_has_bias``), and which experts the balance loss counts.

*A new scheme* is one entry here (and, if it ranks groups in a new way, one function in ``GROUP_SCORES``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoutingScheme:
    """One way of selecting experts.

    ``group_score``: how a group is ranked for group-limited routing ("max": its best expert; "top2": the sum of its
    two best), or None for no group limit. ``selection_bias``: select by ``s + b`` with the router's float32 bias b
    (gate values still from s), and count the top-K of the unbiased s in the balance loss (DeepSeek-V3 Eq. (18)).
    ``source``: where the scheme is defined.
    """

    group_score: str | None
    selection_bias: bool
    source: str


ROUTING_SCHEMES: dict[str, RoutingScheme] = {
    "greedy": RoutingScheme(None, False, "DeepSeek-V2 §2.2.1, Eq. (21): top-K of the scores"),
    "group_limited_greedy": RoutingScheme("max", False, "DeepSeek-V2 §2.2.2: device-limited routing"),
    "noaux_tc": RoutingScheme("top2", True, "DeepSeek-V3 §2.1.2, Eq. (16): selection bias, node-limited routing"),
}
