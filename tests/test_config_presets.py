"""minimoe.config.presets: every preset builds and round-trips; the released configs; the papers' values."""

import pytest

from minimoe.config import PAPER_VALUES, PRESETS, ModelConfig


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
