"""minimoe.config.routing: the schemes drive the config's derived properties; a new one is one entry."""

import pytest
import torch

from minimoe import Transformer
from minimoe.config import ROUTING_SCHEMES, ModelConfig, RoutingScheme


def test_routing_schemes_drive_the_derived_properties():
    v3, v2 = ModelConfig.from_preset("deepseek-v3"), ModelConfig.from_preset("deepseek-v2")
    assert v3.routing_scheme is ROUTING_SCHEMES["noaux_tc"] and v3.router_has_bias
    assert not v2.router_has_bias and not ModelConfig().router_has_bias  # dense: no router at all
    with pytest.raises(ValueError, match=r"topk_method \('topk'\) must be one of \('greedy'"):
        ModelConfig(n_routed_experts=4, topk_method="topk")


def test_a_new_routing_scheme_is_one_registry_entry(monkeypatch):
    """A scheme that selects with a bias and ranks groups by their best expert: one entry, nothing else."""
    monkeypatch.setitem(ROUTING_SCHEMES, "biased_max", RoutingScheme("max", True, "a test scheme"))
    cfg = ModelConfig.from_preset("tiny-v3", topk_method="biased_max", aux_loss_alpha=0.01)
    assert cfg.router_has_bias
    model = Transformer(cfg)
    assert model.layers[1].ffn.router.bias is not None
    out = model(torch.randint(cfg.vocab_size, (2, 6)))
    assert out.balance_loss > 0 and out.routing[0].group_mask is not None
