"""minimoe.moe.gate: scores, group limits and the selection bias; the Router against transformers'."""

import pytest
import torch

from minimoe.config import ModelConfig
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


def test_bias_changes_selection_never_gate_values():
    cfg = ModelConfig.from_preset("tiny-v3")
    torch.manual_seed(0)
    router = Router(cfg)
    x = torch.randn(64, cfg.hidden_size)
    sel = router(x)
    weights, indices, scores = sel.gate_weights, sel.experts, sel.scores
    loaded = indices.flatten().bincount(minlength=cfg.n_routed_experts).argmax()
    with torch.no_grad():
        router.bias[loaded] = -10.0  # a heavily penalised expert is never selected again
    sel_b = router(x)
    weights_b, indices_b, scores_b = sel_b.gate_weights, sel_b.experts, sel_b.scores
    assert (indices == loaded).any() and not (indices_b == loaded).any()
    torch.testing.assert_close(scores_b, scores)  # affinities do not see the bias
    # gate values are the unbiased scores of the selected experts, normalised, times routed_scaling_factor
    g = scores_b.gather(-1, indices_b)
    torch.testing.assert_close(weights_b, g / g.sum(-1, keepdim=True) * cfg.routed_scaling_factor)
    same = (indices_b.sort(-1).values == indices.sort(-1).values).all(-1)
    torch.testing.assert_close(weights_b[same].sort(-1).values, weights[same].sort(-1).values)
    # a bias shift shared by every expert changes nothing
    with torch.no_grad():
        router.bias.fill_(0.3)
    indices_c = router(x).experts
    assert torch.equal(indices_c, indices)


def test_routers_without_noaux_tc_have_no_bias():
    assert Router(ModelConfig.from_preset("tiny-v2")).bias is None
