"""minimoe.config.checks, through ModelConfig: wrong types and bad values name the field; normalising."""

import math

import numpy as np
import pytest

from minimoe.config import ConfigTypeError, ModelConfig


@pytest.mark.parametrize("changes, message", [
    (dict(num_hidden_layers=True), "num_hidden_layers must be a positive integer, got True"),
    (dict(n_routed_experts=False), "n_routed_experts"),
    (dict(num_experts_per_tok=2.5), r"num_experts_per_tok must be an integer, got 2\.5 \(float\)"),
    (dict(n_shared_experts="1"), "n_shared_experts"),
    (dict(n_shared_experts=None), "n_shared_experts"),
    (dict(n_group="4"), "n_group"),
    (dict(n_group=None), "n_group"),
    (dict(hidden_size=64.0), "hidden_size"),
    (dict(q_lora_rank=True), "q_lora_rank"),
    (dict(aux_loss_alpha=True), "aux_loss_alpha must be a number"),
    (dict(routed_scaling_factor="2.5"), "routed_scaling_factor"),
    (dict(rope_theta=None), "rope_theta"),
    (dict(seq_aux=1), "seq_aux must be True or False"),
    (dict(norm_topk_prob="yes"), "norm_topk_prob"),
    (dict(topk_method=None), "topk_method"),
    (dict(rope_scaling=[("type", "yarn")]), "rope_scaling must be a dict"),
    (dict(rope_scaling={"type": "yarn", "factor": "40", "original_max_position_embeddings": 64}),
     r"rope_scaling\['factor'\] must be a number"),
    (dict(rope_scaling={"type": "yarn", "factor": None, "original_max_position_embeddings": 64}),
     r"rope_scaling\['factor'\]"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64.5}),
     r"rope_scaling\['original_max_position_embeddings'\]"),
])
def test_wrong_types_name_the_field(changes, message):
    with pytest.raises(ConfigTypeError, match=message) as caught:
        ModelConfig.from_preset("tiny-v3", **changes)
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)
    with pytest.raises(ConfigTypeError, match="name must be a string"):
        ModelConfig(name=3)


@pytest.mark.parametrize("changes, message", [
    (dict(routed_scaling_factor=math.inf), r"routed_scaling_factor \(inf\) must be finite"),
    (dict(routed_scaling_factor=math.nan), r"routed_scaling_factor \(nan\) must be finite"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
    (dict(aux_loss_alpha=-math.inf), "aux_loss_alpha"),
    (dict(bias_update_speed=math.nan), "bias_update_speed"),
    (dict(rms_norm_eps=math.inf), "rms_norm_eps"),
    (dict(qk_rope_head_dim=0), r"qk_rope_head_dim \(0\) must be a positive even integer: MLA"),
    (dict(qk_rope_head_dim=-2), "qk_rope_head_dim"),
    (dict(attention_type="mha", head_dim=7), "head_dim"),
    (dict(attention_type="mha", qk_nope_head_dim=15), "qk_nope_head_dim . qk_rope_head_dim"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "facter": 2}),
     "facter"),
    (dict(rope_scaling={"type": "yarn", "factor": math.inf, "original_max_position_embeddings": 64}),
     "factor"),
])
def test_non_finite_and_out_of_range_values_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_preset("tiny-v3", **changes)


def test_values_are_normalised_and_the_baseline_needs_no_rope_split():
    cfg = ModelConfig(hidden_size=np.int64(64), rope_theta=10000, routed_scaling_factor=np.float32(2.0))
    assert type(cfg.hidden_size) is int and type(cfg.rope_theta) is float
    assert type(cfg.routed_scaling_factor) is float
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # the MHA baseline turns its whole head: MLA's decoupled RoPE width may be 0 there
    assert ModelConfig(attention_type="mha", qk_rope_head_dim=0).baseline_head_dim == 16
