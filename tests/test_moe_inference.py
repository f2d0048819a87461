"""Router maths and DeepSeekMoE dispatch (inference path)."""

import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.moe.dispatch import dispatch_sorted
from minimoe.moe.experts import MLP, DeepSeekMoE, naive_moe_forward
from minimoe.moe.gate import Router, affinity_scores, group_mask, select_experts


def _cfg(**kw):
    return ModelConfig.from_preset("tiny-v3", **kw)


def test_greedy_softmax_keeps_top_k_scores_unnormalised():
    scores = affinity_scores(torch.randn(5, 8), "softmax")
    sel = select_experts(scores, 3, routed_scaling_factor=2.0)
    weights, indices = sel.gate_weights, sel.experts
    top = scores.topk(3, dim=-1)
    torch.testing.assert_close(indices, top.indices)
    torch.testing.assert_close(weights, 2.0 * top.values)
    assert (weights.sum(-1) < 2.0).all()  # V2 does not renormalise


def test_norm_topk_prob_sums_to_scaling_factor():
    scores = affinity_scores(torch.randn(6, 8), "sigmoid")
    weights = select_experts(scores, 2, norm_topk_prob=True, routed_scaling_factor=2.5).gate_weights
    torch.testing.assert_close(weights.sum(-1), torch.full((6,), 2.5))


def _groups_used(indices, group_size):
    return [set((row // group_size).tolist()) for row in indices]


@pytest.mark.parametrize("method", ["group_limited_greedy", "noaux_tc"])
def test_group_constraint_respected(method):
    torch.manual_seed(0)
    scores = affinity_scores(torch.randn(200, 16), "sigmoid")
    bias = torch.randn(16) if method == "noaux_tc" else None  # makes some biased scores negative
    indices = select_experts(scores, 4, topk_method=method, n_group=4, topk_group=2, bias=bias).experts
    assert all(len(g) <= 2 for g in _groups_used(indices, 4))


def test_group_scores_max_for_v2_top2_sum_for_v3():
    # group 0 has the single best expert; group 1 has the best pair
    choice = torch.tensor([[0.9, 0.0, 0.6, 0.6]])
    torch.testing.assert_close(group_mask(choice, 2, 1, "max"), torch.tensor([[True, True, False, False]]))
    torch.testing.assert_close(group_mask(choice, 2, 1, "top2"), torch.tensor([[False, False, True, True]]))


def test_group_limited_matches_brute_force():
    torch.manual_seed(1)
    scores = affinity_scores(torch.randn(50, 12), "softmax")
    indices = select_experts(scores, 3, topk_method="group_limited_greedy", n_group=3, topk_group=2).experts
    for s, idx in zip(scores, indices):
        best_groups = s.view(3, 4).max(-1).values.topk(2).indices
        allowed = torch.cat([torch.arange(4 * g, 4 * g + 4) for g in best_groups.tolist()])
        expected = allowed[s[allowed].topk(3).indices]
        assert sorted(idx.tolist()) == sorted(expected.tolist())


def test_bias_changes_selection_but_not_gate_values():
    torch.manual_seed(2)
    scores = affinity_scores(torch.randn(4, 8), "sigmoid")
    plain_i = select_experts(scores, 2, topk_method="noaux_tc").experts
    bias = torch.zeros(8)
    weakest = scores.mean(0).argmin()
    bias[weakest] = 10.0
    sel = select_experts(scores, 2, topk_method="noaux_tc", bias=bias)
    w, i = sel.gate_weights, sel.experts
    assert (i == weakest).any(-1).all() and not torch.equal(i, plain_i)
    torch.testing.assert_close(w, scores.gather(1, i))  # unbiased scores
    wn = select_experts(scores, 2, topk_method="noaux_tc", bias=bias, norm_topk_prob=True).gate_weights
    torch.testing.assert_close(wn, w / w.sum(-1, keepdim=True))


def test_route_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k"):
        select_experts(torch.rand(2, 4), 5)
    with pytest.raises(ValueError, match="topk_method"):
        select_experts(torch.rand(2, 4), 2, topk_method="topk")
    with pytest.raises(ValueError, match="scoring_func"):
        affinity_scores(torch.rand(2, 4), "relu")


def test_router_bias_buffer_only_for_noaux_tc():
    v3 = Router(_cfg())
    assert v3.bias.dtype == torch.float32 and v3.bias.shape == (8,) and "bias" in dict(v3.named_buffers())
    assert Router(ModelConfig.from_preset("tiny-v2")).bias is None
    sel = v3(torch.randn(7, 64))
    assert sel.gate_weights.shape == (7, 2) and sel.experts.shape == (7, 2) and sel.scores.shape == (7, 8)


@pytest.mark.parametrize("preset", ["tiny-v2", "tiny-v3"])
def test_sorted_dispatch_equals_naive_outputs_and_gradients(preset):
    torch.manual_seed(3)
    moe = DeepSeekMoE(ModelConfig.from_preset(preset)).double()
    if moe.router.bias is not None:
        moe.router.bias.normal_()
    x = torch.randn(3, 11, 64, dtype=torch.float64, requires_grad=True)
    y = moe(x)
    (g_x,) = torch.autograd.grad((y * torch.cos(y)).sum(), x)
    y_ref = naive_moe_forward(moe, x)
    (g_ref,) = torch.autograd.grad((y_ref * torch.cos(y_ref)).sum(), x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g_x, g_ref)


def test_sorted_dispatch_equals_naive_parameter_gradients():
    torch.manual_seed(4)
    moe = DeepSeekMoE(_cfg()).double()
    x = torch.randn(20, 64, dtype=torch.float64)
    moe(x).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in moe.named_parameters()}
    moe.zero_grad()
    naive_moe_forward(moe, x).square().sum().backward()
    for n, p in moe.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=n)


def test_dispatch_with_expert_that_gets_no_tokens():
    experts = torch.nn.ModuleList(MLP(8, 4) for _ in range(4))
    x = torch.randn(5, 8)
    indices = torch.tensor([[0, 2]] * 5)
    weights = torch.rand(5, 2)
    expected = weights[:, :1] * experts[0](x) + weights[:, 1:] * experts[2](x)
    torch.testing.assert_close(dispatch_sorted(x, weights, indices, experts), expected)


def test_routing_record_shapes_and_shared_experts():
    cfg = _cfg(n_shared_experts=2)
    moe = DeepSeekMoE(cfg)
    assert moe.shared_experts.w1.out_features == 2 * cfg.moe_intermediate_size
    assert len(moe.experts) == 8 and moe.experts[0].w1.out_features == cfg.moe_intermediate_size
    y, record = moe.forward_routed(torch.randn(2, 5, 64), layer=3)
    assert y.shape == (2, 5, 64) and record.layer == 3
    assert record.scores.shape == (2, 5, 8) and record.experts.shape == (2, 5, 2)
    assert DeepSeekMoE(_cfg(n_shared_experts=0)).shared_experts is None


@pytest.mark.equivalence
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_router_matches_transformers(version):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(5)
    if version == "v2":
        from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter as HFRouter
        cfg = ModelConfig.from_preset("tiny-v2", routed_scaling_factor=16.0)
        hf_cfg = transformers.DeepseekV2Config(
            hidden_size=64, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
            topk_method="group_limited_greedy", routed_scaling_factor=16.0)
    else:
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter as HFRouter
        cfg = _cfg()
        hf_cfg = transformers.DeepseekV3Config(
            hidden_size=64, n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
            norm_topk_prob=True, routed_scaling_factor=2.5)
    ours, theirs = Router(cfg), HFRouter(hf_cfg)
    theirs.weight.data.copy_(ours.weight.data)
    if version == "v3":
        ours.bias.normal_(std=0.1)
        theirs.e_score_correction_bias.copy_(ours.bias)
    x = torch.randn(64, 64)
    sel = ours(x)
    w, i = sel.gate_weights, sel.experts
    _, hf_w, hf_i = theirs(x)
    hf_i, order = hf_i.sort(-1)
    i, our_order = i.sort(-1)
    torch.testing.assert_close(i, hf_i)
    torch.testing.assert_close(w.gather(1, our_order), hf_w.gather(1, order))
