"""The chapter 3 routing heat map and explorer in minimoe.viz draw what minimoe.moe.gate.route selects."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.patches import Rectangle

from minimoe.moe.gate import affinity_scores, group_mask, select_experts
from minimoe.viz import plot_routing_heatmap, routing_explorer

pytest.importorskip("ipywidgets")


@pytest.fixture
def logits():
    return torch.randn(12, 16, generator=torch.Generator().manual_seed(0))  # (N, E)


def boxed_cells(ax):
    return sorted((int(p.get_y() + 0.5), int(p.get_x() + 0.5)) for p in ax.patches if isinstance(p, Rectangle))


def test_heatmap_boxes_exactly_the_selected_experts(logits):
    scores = affinity_scores(logits, "sigmoid")
    indices = select_experts(scores, 3, topk_method="noaux_tc", n_group=4, topk_group=2).experts
    ax = plot_routing_heatmap(scores, indices, n_group=4, allowed=group_mask(scores, 4, 2, "top2"))
    assert boxed_cells(ax) == sorted((t, e) for t, row in enumerate(indices.tolist()) for e in row)
    assert len(ax.images) == 2  # the scores and the grey overlay of the groups not kept
    assert len(ax.lines) == 3  # boundaries between 4 groups
    plt.close("all")


def test_explorer_routes_like_route_and_moves_load_with_the_bias(logits, capsys):
    explorer = routing_explorer(logits, k=4, n_group=4, topk_group=2)
    widgets = {child.description: child for child in explorer.children if hasattr(child, "description")}
    widgets["biased expert"].value, widgets["bias b_i"].value = 5, 1.0
    explorer.update()
    out = capsys.readouterr().out
    b = torch.zeros(16)
    b[5] = 1.0
    indices = select_experts(affinity_scores(logits, "sigmoid"), 4, topk_method="noaux_tc", n_group=4, topk_group=2,
                             bias=b, norm_topk_prob=True).experts
    load = torch.bincount(indices.reshape(-1), minlength=16).tolist()
    assert f"tokens per expert: {load}" in out
    assert load[5] == 12  # a bias of 1.0 on sigmoid scores in (0, 1) wins every token
    plt.close("all")


def test_explorer_softmax_ignores_the_bias_and_rejects_too_few_experts(logits, capsys):
    explorer = routing_explorer(logits)
    widgets = {child.description: child for child in explorer.children if hasattr(child, "description")}
    widgets["router"].value, widgets["bias b_i"].value = "softmax (V2)", 0.5
    explorer.update()
    assert "is ignored here" in capsys.readouterr().out
    widgets["groups"].value, widgets["kept groups"].value, widgets["top-k"].value = 8, 1, 3
    explorer.update()
    assert "k (3) must be <= topk_group × experts per group (1 × 2)" in capsys.readouterr().out
    plt.close("all")


def test_plot_routing_record_draws_a_forward_without_rerouting():
    import matplotlib
    matplotlib.use("Agg")
    import minimoe
    from minimoe.viz import plot_routing_record
    cfg = minimoe.ModelConfig.from_preset("tiny-v3", n_group=4, topk_group=2)
    out = minimoe.Transformer(cfg)(torch.randint(0, cfg.vocab_size, (2, 5)))
    ax = plot_routing_record(out.routing[0], row=1, n_group=4)
    assert len(ax.patches) == 5 * cfg.num_experts_per_tok  # one box per selected (token, expert)
