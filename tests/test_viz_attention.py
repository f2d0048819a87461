"""The chapter 1–2 cache plots and explorers in minimoe.viz draw what accounting computes, for any slider values."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from minimoe.accounting import kv_cache_per_token  # noqa: E402
from minimoe.config import ModelConfig  # noqa: E402
from minimoe.viz import attention_cache_explorer, mla_cache_explorer, plot_cache_per_token_bars  # noqa: E402

pytest.importorskip("ipywidgets")


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
