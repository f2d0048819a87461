"""DeepSeekMoE: the router (``gate``), the experts and the reference forward (``experts``), the fast token dispatch
(``dispatch``), the balance losses and the auxiliary-loss-free bias update (``balance``); expert parallelism lives
in ``minimoe.moe.parallel`` (it imports ``torch.distributed``)."""

from minimoe.moe.balance import (
    communication_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    expert_load,
    max_violation,
    routing_balance_loss,
    sequence_balance_loss,
    update_selection_bias,
)
from minimoe.moe.dispatch import LocalDispatcher, capacity_mask, dispatch_sorted, run_experts, sort_by_expert
from minimoe.moe.experts import MLP, DeepSeekMoE, Expert, naive_moe_forward
from minimoe.moe.gate import GROUP_SCORES, Router, RoutingRecord, Selection, affinity_scores, group_mask, select_experts

__all__ = [
    "GROUP_SCORES",
    "MLP",
    "DeepSeekMoE",
    "Expert",
    "LocalDispatcher",
    "Router",
    "RoutingRecord",
    "Selection",
    "affinity_scores",
    "capacity_mask",
    "communication_balance_loss",
    "device_balance_loss",
    "dispatch_sorted",
    "expert_balance_loss",
    "expert_load",
    "group_mask",
    "max_violation",
    "naive_moe_forward",
    "routing_balance_loss",
    "run_experts",
    "select_experts",
    "sequence_balance_loss",
    "sort_by_expert",
    "update_selection_bias",
]
