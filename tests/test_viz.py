"""minimoe.viz: the chapter 1–3 plots and explorers draw what accounting computes and the router selects."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from minimoe.accounting import kv_cache_per_token  # noqa: E402
from minimoe.config import ModelConfig  # noqa: E402
from minimoe.moe.gate import affinity_scores, group_mask, select_experts  # noqa: E402
from minimoe.viz import (attention_cache_explorer, mla_cache_explorer, plot_cache_per_token_bars,  # noqa: E402
                         plot_routing_heatmap, routing_explorer)

pytest.importorskip("ipywidgets")


# ---------------------------------------------------------------- chapters 1–2: the KV-cache plots and explorers

@pytest.fixture
def v3():
    return ModelConfig.from_preset("deepseek-v3")


def test_cache_bars_are_per_layer_elements(v3):
    ax = plot_cache_per_token_bars(v3, n_groups=8)
    heights = [bar.get_height() for bar in ax.patches]
    layers = v3.num_hidden_layers
    assert heights == [kv_cache_per_token(v3, "mha") / layers, kv_cache_per_token(v3, "gqa", n_groups=8) / layers,
                       kv_cache_per_token(v3, "mqa") / layers, 576]
    plt.close("all")


def test_mla_explorer_prints_the_gqa_equivalence(v3, capsys):
    explorer = mla_cache_explorer(v3)
    explorer.update()
    assert "= 2.25 groups" in capsys.readouterr().out
    explorer.children[0].value = 1024  # d_c slider: (1024 + 64) / 256 groups
    explorer.update()
    assert "= 4.25 groups" in capsys.readouterr().out
    plt.close("all")


def test_attention_explorer_handles_more_kv_heads_than_heads(v3, capsys):
    explorer = attention_cache_explorer(v3)
    sliders = {child.description: child for child in explorer.children if hasattr(child, "description")}
    sliders["n_h"].value, sliders["kv heads"].value, sliders["dtype"].value = 4, 16, "float32"
    explorer.update()
    out = capsys.readouterr().out
    assert "gqa (4 kv heads)" in out and "float32" in out
    plt.close("all")


# ---------------------------------------------------------------- chapter 3: the routing heat map and explorer

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
