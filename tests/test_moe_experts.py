"""minimoe.moe.experts: DeepSeekMoE's routing record, routed and shared experts."""

import torch

from minimoe.config import ModelConfig
from minimoe.moe.experts import DeepSeekMoE


def _cfg(**kw):
    return ModelConfig.from_preset("tiny-v3", **kw)


def test_routing_record_shapes_and_shared_experts():
    cfg = _cfg(n_shared_experts=2)
    moe = DeepSeekMoE(cfg)
    assert moe.shared_experts.w1.out_features == 2 * cfg.moe_intermediate_size
    assert len(moe.experts) == 8 and moe.experts[0].w1.out_features == cfg.moe_intermediate_size
    y, record = moe.forward_routed(torch.randn(2, 5, 64), layer=3)
    assert y.shape == (2, 5, 64) and record.layer == 3
    assert record.scores.shape == (2, 5, 8) and record.experts.shape == (2, 5, 2)
    assert DeepSeekMoE(_cfg(n_shared_experts=0)).shared_experts is None
