import ast
import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch

from minimoe import Transformer
from minimoe.config import (
    PAPER_VALUES,
    PRESETS,
    ROUTING_SCHEMES,
    ConfigTypeError,
    ModelConfig,
    RoutingScheme,
    model_config,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip(name):
    cfg = ModelConfig.from_preset(name)
    assert cfg.name == name
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_published_presets_match_released_configs():
    # DeepSeek-V2 §3.1.2 and App. B.1, DeepSeek-V3 §4.2, and the released config.json files
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert (v3.hidden_size, v3.num_hidden_layers, v3.num_attention_heads, v3.q_lora_rank) == (7168, 61, 128, 1536)
    assert (v3.n_routed_experts, v3.n_shared_experts, v3.num_experts_per_tok, v3.moe_intermediate_size) == (256, 1, 8, 2048)
    assert (v3.first_k_dense_replace, v3.n_group, v3.topk_group, v3.routed_scaling_factor) == (3, 8, 4, 2.5)
    assert (v3.topk_method, v3.scoring_func, v3.vocab_size) == ("noaux_tc", "sigmoid", 129280)
    v2 = ModelConfig.from_preset("deepseek-v2")
    assert (v2.hidden_size, v2.num_hidden_layers, v2.n_routed_experts, v2.routed_scaling_factor) == (5120, 60, 160, 16.0)
    assert (v2.n_group, v2.topk_group, v2.topk_method, v2.intermediate_size) == (8, 3, "group_limited_greedy", 12288)
    lite = ModelConfig.from_preset("deepseek-v2-lite")
    assert lite.q_lora_rank is None and lite.num_attention_heads == 16 and lite.n_routed_experts == 64
    for cfg in (v2, v3, lite):
        assert (cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim) == (512, 128, 64, 128)


@pytest.mark.parametrize("changes, message", [
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(kv_lora_rank=-1), "kv_lora_rank"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
    (dict(num_experts_per_tok=9), r"num_experts_per_tok \(9\) must be <= n_routed_experts \(8\)"),
    (dict(n_group=3), r"n_routed_experts \(8\) must be divisible by n_group \(3\)"),
    (dict(topk_group=5), "topk_group"),
    (dict(topk_method="best"), "topk_method"),
    (dict(scoring_func="relu"), "scoring_func"),
    (dict(q_lora_rank=-4), "q_lora_rank"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(rope_scaling={"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 64}), "factor"),
    (dict(attention_type="linear"), "attention_type"),
])
def test_invalid_values_name_field_and_rule(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_preset("tiny-v2", **changes)


def test_q_lora_rank_zero_means_no_compression():
    assert ModelConfig(q_lora_rank=0).q_lora_rank is None


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_preset("gpt-5")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"hidden": 3})


def test_balance_loss_presets_are_sequence_wise_as_released():
    # DeepSeek-V2 Eq. (23)-(25) defines the expert-level loss over the tokens of one sequence; the released V2,
    # V2-Lite and V3 configs all have seq_aux true and aux_loss_alpha 0.001.
    for name in ("deepseek-v2-lite", "deepseek-v2", "deepseek-v3"):
        cfg = ModelConfig.from_preset(name)
        assert (cfg.seq_aux, cfg.aux_loss_alpha) == (True, 0.001), name
    assert ModelConfig.from_preset("tiny-v2").seq_aux
    # where the papers state other values: DeepSeek-V2 §3.1.2 alpha_1 = 0.003, DeepSeek-V3 §4.2 alpha = 0.0001
    assert PAPER_VALUES == {"deepseek-v2": {"aux_loss_alpha": 0.003}, "deepseek-v3": {"aux_loss_alpha": 0.0001}}
    assert all(set(values) <= set(ModelConfig.from_preset(name).to_dict()) for name, values in PAPER_VALUES.items())


# ---------------------------------------------------------------- types: fields named; bool is not an int

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


# ---------------------------------------------------------------- declared once; routing schemes in one registry

def test_every_field_is_declared_once_with_its_meaning():
    """Each field of ModelConfig is followed by its docstring (its meaning lives where it is declared)."""
    tree = ast.parse(inspect.getsource(model_config))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelConfig").body
    fields = [(i, n.target.id) for i, n in enumerate(body) if isinstance(n, ast.AnnAssign)]
    assert [name for _, name in fields] == [f.name for f in dataclasses.fields(ModelConfig)]
    undocumented = [name for i, name in fields if not (isinstance(body[i + 1], ast.Expr)
                                                       and isinstance(body[i + 1].value, ast.Constant))]
    assert undocumented == []


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


def test_flat_hugging_face_names_still_build_and_replace():
    cfg = ModelConfig(hidden_size=32, n_routed_experts=4, num_experts_per_tok=2, kv_lora_rank=16)
    assert (cfg.hidden_size, cfg.n_routed_experts, cfg.kv_lora_rank) == (32, 4, 16)
    moved = cfg.replace(n_routed_experts=8, aux_loss_alpha=0.01)
    assert (moved.n_routed_experts, moved.aux_loss_alpha, cfg.n_routed_experts) == (8, 0.01, 4)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        cfg.replace(num_experts_per_tok=1.5)
    v2 = ModelConfig.from_dict(ModelConfig.from_preset("tiny-v2").to_dict())
    assert v2.topk_method == "group_limited_greedy"
