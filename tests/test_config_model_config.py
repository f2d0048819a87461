"""minimoe.config.model_config: ModelConfig's range checks, fields declared with their meaning, HF names."""

import ast
import dataclasses
import inspect

import pytest

from minimoe.config import ModelConfig, model_config


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


# ---------------------------------------------------------------- declared once

def test_every_field_is_declared_once_with_its_meaning():
    """Each field of ModelConfig is followed by its docstring (its meaning lives where it is declared)."""
    tree = ast.parse(inspect.getsource(model_config))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ModelConfig").body
    fields = [(i, n.target.id) for i, n in enumerate(body) if isinstance(n, ast.AnnAssign)]
    assert [name for _, name in fields] == [f.name for f in dataclasses.fields(ModelConfig)]
    undocumented = [name for i, name in fields if not (isinstance(body[i + 1], ast.Expr)
                                                       and isinstance(body[i + 1].value, ast.Constant))]
    assert undocumented == []


def test_flat_hugging_face_names_still_build_and_replace():
    cfg = ModelConfig(hidden_size=32, n_routed_experts=4, num_experts_per_tok=2, kv_lora_rank=16)
    assert (cfg.hidden_size, cfg.n_routed_experts, cfg.kv_lora_rank) == (32, 4, 16)
    moved = cfg.replace(n_routed_experts=8, aux_loss_alpha=0.01)
    assert (moved.n_routed_experts, moved.aux_loss_alpha, cfg.n_routed_experts) == (8, 0.01, 4)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        cfg.replace(num_experts_per_tok=1.5)
    v2 = ModelConfig.from_dict(ModelConfig.from_preset("tiny-v2").to_dict())
    assert v2.topk_method == "group_limited_greedy"
