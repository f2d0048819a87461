"""The judge of a2_moe_routing: top-K routing, group-limited routing, the sequence-wise balance loss, the
auxiliary-loss-free bias update and token dropping with protected tokens (11 points over 22 items). References: the
judge's own ``minimoe.moe``, and :func:`capacity_keep` below (DeepSeek-V2 §2.2.4; ``minimoe`` has no protection)."""

from __future__ import annotations

import math

import torch

from judge.core import Failed, Item, call, check_tensor, tensors, unchanged
from minimoe.moe import balance, gate

STUBS = {"minimoe.moe.gate": ["affinity_scores", "group_mask", "select_experts", "Router.forward"],
         "minimoe.moe.balance": ["expert_balance_loss", "device_balance_loss", "communication_balance_loss",
                                 "sequence_balance_loss", "expert_load", "update_selection_bias"],
         "minimoe.moe.dispatch": ["capacity_mask"]}


def _dense(weights: torch.Tensor, indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(N, K) gate values at (N, K) experts as (N, E), zeros elsewhere: the order of the K experts is free."""
    return torch.zeros(weights.shape[0], n_experts, dtype=torch.float64).scatter(1, indices, weights.double())


def _routing(fn: str, value, want_w: torch.Tensor, want_i: torch.Tensor, n_experts: int, dtype: torch.dtype) -> None:
    w, i = tensors(fn, value, 2)
    if w.dtype != dtype or i.dtype != torch.int64:
        raise Failed(f"{fn}: wrong dtype")
    if w.shape != want_w.shape or i.shape != want_i.shape:
        raise Failed(f"{fn}: wrong shape")
    if not bool((i >= 0).all() and (i < n_experts).all()) or bool((i.sort(-1).values.diff(dim=-1) == 0).any()):
        raise Failed(f"{fn}: indices out of range or repeated")
    check_tensor(fn, _dense(w, i, n_experts), _dense(want_w, want_i, n_experts), 1e-5)


def _route(scoring: str, norm: bool, scale: float, k: int, dtype: torch.dtype, n_experts: int = 16):
    def check(remote, gen):
        logits = torch.randn(13, n_experts, generator=gen, dtype=torch.float64).to(dtype)
        reply = call(remote, "route_topk", logits, k, scoring, norm, scale, full=True)
        unchanged("route_topk", reply, (logits,))
        sel = gate.select_experts(gate.affinity_scores(logits, scoring), k, norm_topk_prob=norm,
                                  routed_scaling_factor=scale)
        want_w, want_i = sel.gate_weights, sel.experts
        _routing("route_topk", reply["value"], want_w, want_i, n_experts, torch.float32)
    return check


def _group(n: int, e: int, k: int, n_group: int, topk_group: int, dtype: torch.dtype):
    def check(remote, gen):
        scores = torch.randn(n, e, generator=gen, dtype=torch.float64).softmax(-1).to(dtype)
        reply = call(remote, "group_limited_route", scores, k, n_group, topk_group, full=True)
        unchanged("group_limited_route", reply, (scores,))
        sel = gate.select_experts(scores, k, topk_method="group_limited_greedy", n_group=n_group,
                                  topk_group=topk_group)
        want_w, want_i = sel.gate_weights, sel.experts
        _routing("group_limited_route", reply["value"], want_w, want_i, e, dtype)
    return check


def _best_not_sum(remote, gen):
    """Groups ranked by their best expert, where the best sum of two (or of all) lies in another group."""
    scores = torch.tensor([[0.02, 0.30, 0.01, 0.03, 0.20, 0.01, 0.19, 0.18, 0.02, 0.01, 0.02, 0.01],
                           [0.21, 0.20, 0.20, 0.01, 0.01, 0.02, 0.01, 0.30, 0.01, 0.01, 0.01, 0.01]])
    scores = scores[torch.randperm(2, generator=gen)]
    value = call(remote, "group_limited_route", scores, 2, 3, 1)
    sel = gate.select_experts(scores, 2, topk_method="group_limited_greedy", n_group=3, topk_group=1)
    want_w, want_i = sel.gate_weights, sel.experts
    _routing("group_limited_route", value, want_w, want_i, 12, torch.float32)


def _balance(cases, with_grad: bool):
    def check(remote, gen):
        for b, t, e, k, alpha in cases:
            scores = torch.rand(b, t, e, generator=gen, dtype=torch.float64) + 0.01
            idx = torch.rand(b, t, e, generator=gen).topk(k, dim=-1).indices
            mine = scores.clone().requires_grad_()
            want = balance.sequence_balance_loss(mine, idx, e, alpha)
            if with_grad:
                reply = call(remote, "sequence_balance_loss", scores, idx, e, alpha, grad=(0,))
                grads = reply.get("grads")
                if not isinstance(grads, tuple) or len(grads) != 1 or grads[0] is None:
                    raise Failed("sequence_balance_loss: no gradient reaches the scores")
                want_grad, = torch.autograd.grad(want, mine)
                check_tensor("sequence_balance_loss", grads[0], want_grad, 1e-6, "wrong gradient")
            else:
                reply = call(remote, "sequence_balance_loss", scores, idx, e, alpha, full=True)
                unchanged("sequence_balance_loss", reply, (scores, idx))
                check_tensor("sequence_balance_loss", reply["value"], want.detach(), 1e-6)
    return check


def _bias(cases):
    def check(remote, gen):
        for e, gamma, dtype, load_dtype in cases:
            bias = torch.randn(e, generator=gen, dtype=torch.float64).to(dtype)
            load = torch.randint(0, 50, (e,), generator=gen).to(load_dtype)
            if load_dtype.is_floating_point:
                load = load / load.sum().clamp_min(1)  # shares
            reply = call(remote, "update_bias", bias, load, gamma, full=True)
            unchanged("update_bias", reply, (bias, load))
            check_tensor("update_bias", reply["value"], balance.update_selection_bias(bias, load, gamma), 1e-6)
    return check


def _bias_at_mean(remote, gen):
    """Experts exactly at the mean keep their bias (counts and shares); all equal: nothing moves."""
    for load in (torch.tensor([3, 1, 2, 2]), torch.tensor([0.375, 0.125, 0.25, 0.25]), torch.tensor([7, 7, 7, 7])):
        bias = torch.randn(4, generator=gen)
        value = call(remote, "update_bias", bias, load, 0.1)
        check_tensor("update_bias", value, balance.update_selection_bias(bias, load, 0.1), 1e-6)


def capacity_keep(affinity: torch.Tensor, indices: torch.Tensor, n_experts: int, capacity_factor: float,
                  protected: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2 §2.2.4 per expert: C = ⌈capacity_factor·N·K/E⌉; protected tokens always kept and counted first,
    the room left to the highest affinities (the earlier token on ties). Shapes: (N, K), (N, K), (N,) -> (N, K)."""
    capacity = math.ceil(capacity_factor * indices.numel() / n_experts)
    keep = torch.zeros(indices.shape, dtype=torch.bool)
    spared = protected[:, None].expand(indices.shape)
    for expert in range(n_experts):
        rows, cols = (indices == expert).nonzero(as_tuple=True)  # row-major: the earlier token first
        mine = spared[rows, cols]
        keep[rows[mine], cols[mine]] = True
        room = max(capacity - int(mine.sum()), 0)
        rows, cols = rows[~mine], cols[~mine]
        best = affinity[rows, cols].argsort(descending=True, stable=True)[:room]
        keep[rows[best], cols[best]] = True
    return keep


def _capacity(n: int, e: int, k: int, factor: float, share: float, ties: bool = False):
    """Tokens routed by a softmax top-K, `share` of them protected; `ties`: affinities on a grid of 4 values."""
    def check(remote, gen):
        logits = torch.randn(n, e, generator=gen) * 2
        affinity, indices = logits.softmax(-1).topk(k, dim=-1)
        if ties:
            affinity = (affinity * 4).ceil() / 4
        protected = torch.rand(n, generator=gen) < share
        reply = call(remote, "capacity_keep", affinity, indices, e, factor, protected, full=True)
        unchanged("capacity_keep", reply, (affinity, indices, protected))
        got, want = reply["value"], capacity_keep(affinity, indices, e, factor, protected)
        if type(got) is not torch.Tensor:
            raise Failed("capacity_keep: wrong type (a torch.Tensor is expected)")
        if got.dtype != torch.bool:
            raise Failed("capacity_keep: wrong dtype")
        if got.shape != want.shape:
            raise Failed("capacity_keep: wrong shape")
        if not torch.equal(got, want):
            raise Failed("capacity_keep: wrong value")
    return check


F32, F64, I64 = torch.float32, torch.float64, torch.int64
BALANCE_CASES = [(3, 10, 8, 2, 0.01), (1, 17, 16, 4, 0.3), (4, 5, 6, 3, 1.0)]
ITEMS = [
    Item("test_route_topk", "softmax, K = 2", 0.75, _route("softmax", False, 1.0, 2, F32)),
    Item("test_route_topk", "sigmoid, normalised, scaled by 2.5", 0.5, _route("sigmoid", True, 2.5, 3, F32)),
    Item("test_route_topk", "float64 logits: float32 gate values", 0.5, _route("sigmoid", False, 16.0, 1, F64)),
    Item("test_route_topk", "softmax, normalised", 0.25, _route("softmax", True, 1.0, 4, F32)),
    Item("test_route_topk", "edge case: K = E (every expert)", 0.5, _route("sigmoid", True, 2.5, 16, F32)),
    Item("test_group_limited_route", "4 groups, 2 kept", 0.75, _group(11, 16, 4, 4, 2, F32)),
    Item("test_group_limited_route", "3 groups, 1 kept", 0.75, _group(9, 12, 2, 3, 1, F32)),
    Item("test_group_limited_route", "float64 scores keep their dtype", 0.5, _group(7, 32, 6, 8, 3, F64)),
    Item("test_group_limited_route", "edge case: every group kept (plain top-K)", 0.5, _group(5, 12, 3, 3, 3, F32)),
    Item("test_group_limited_route", "edge case: best expert and best sum in different groups", 0.5, _best_not_sum),
    Item("test_sequence_balance_loss", "the loss", 1.0, _balance(BALANCE_CASES, with_grad=False)),
    Item("test_sequence_balance_loss", "its gradient (through P only)", 1.0, _balance(BALANCE_CASES, with_grad=True)),
    Item("test_sequence_balance_loss", "edge case: one token, K = E", 0.5, _balance([(2, 1, 5, 5, 0.5)], False)),
    Item("test_update_bias", "float shares", 0.25, _bias([(8, 0.001, F32, F32), (6, 0.01, F64, F64)])),
    Item("test_update_bias", "integer token counts", 0.25, _bias([(16, 0.05, F64, I64), (5, 1.0, F32, I64)])),
    Item("test_update_bias", "edge case: experts at the mean keep their bias", 0.25, _bias_at_mean),
    Item("test_update_bias", "float64 bias keeps its dtype", 0.25, _bias([(7, 0.2, F64, F32)])),
    Item("test_capacity_keep", "capacity factor 1.0, no protected tokens", 0.5, _capacity(40, 8, 2, 1.0, 0.0)),
    Item("test_capacity_keep", "protected tokens take the capacity first", 0.75, _capacity(48, 8, 3, 1.0, 0.25)),
    Item("test_capacity_keep", "edge case: protected tokens beyond the capacity are kept", 0.25,
         _capacity(30, 6, 2, 0.5, 0.6)),
    Item("test_capacity_keep", "edge case: equal affinities keep the earlier token", 0.25,
         _capacity(40, 4, 2, 1.0, 0.1, ties=True)),
    Item("test_capacity_keep", "edge case: a capacity factor of E / K drops nothing", 0.25,
         _capacity(24, 8, 2, 4.0, 0.1)),
]
