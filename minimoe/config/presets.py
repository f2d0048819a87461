"""Presets: the released DeepSeek configs and small teaching models, as ``ModelConfig`` keyword arguments.

``deepseek-v2-lite``, ``deepseek-v2`` and ``deepseek-v3`` hold the values of the released Hugging Face
``config.json`` files (dimensions as in DeepSeek-V2 §3.1.2 and App. B.1, DeepSeek-V3 §4.2). Where a paper states a
different training value than its released config, the preset keeps the config's and ``PAPER_VALUES`` records the
paper's (see its comment); the book's Sources appendix lists every published figure. The teaching presets run in
seconds on a CPU.
"""

from __future__ import annotations

from typing import Any


def _yarn(mscale: float) -> dict[str, Any]:
    # DeepSeek-V2 §3.1.4, DeepSeek-V3 §4.3: YaRN on the RoPE dims only, 4K -> 128K/160K context.
    return {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale}


_MLA_PUBLISHED = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                      rope_theta=10000.0, rms_norm_eps=1e-6)

PRESETS: dict[str, dict[str, Any]] = {
    # The released Hugging Face configs (deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2, DeepSeek-V3 config.json).
    # bias_update_speed is not a config field: it is gamma of DeepSeek-V3 §4.2 (the first 14.3T tokens).
    "deepseek-v2-lite": dict(
        **_MLA_PUBLISHED, vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_hidden_layers=27,
        num_attention_heads=16, q_lora_rank=None, max_position_embeddings=163840, rope_scaling=_yarn(0.707),
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=1408,
        first_k_dense_replace=1, n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax",
        norm_topk_prob=False, routed_scaling_factor=1.0, aux_loss_alpha=0.001, seq_aux=True),
    "deepseek-v2": dict(
        **_MLA_PUBLISHED, vocab_size=102400, hidden_size=5120, intermediate_size=12288, num_hidden_layers=60,
        num_attention_heads=128, q_lora_rank=1536, max_position_embeddings=163840, rope_scaling=_yarn(0.707),
        n_routed_experts=160, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=1536,
        first_k_dense_replace=1, n_group=8, topk_group=3, topk_method="group_limited_greedy",
        scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=16.0, aux_loss_alpha=0.001,
        seq_aux=True),
    "deepseek-v3": dict(
        **_MLA_PUBLISHED, vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
        num_attention_heads=128, q_lora_rank=1536, max_position_embeddings=163840, rope_scaling=_yarn(1.0),
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048,
        first_k_dense_replace=3, n_group=8, topk_group=4, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5, aux_loss_alpha=0.001, seq_aux=True,
        bias_update_speed=0.001, num_nextn_predict_layers=1),
    # teaching presets: same shape of model, sizes that run in seconds on a laptop CPU
    "tiny-dense": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=0),
    "tiny-v2": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=4, topk_group=2,
        topk_method="group_limited_greedy", scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=1.0, aux_loss_alpha=0.003, seq_aux=True),
    "tiny-v3": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, bias_update_speed=0.001),
    "small-v3": dict(
        vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        max_position_embeddings=1024, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        moe_intermediate_size=64, first_k_dense_replace=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, bias_update_speed=0.001),
}

# Where a paper states a different value than its released config (the preset keeps the config's):
# - DeepSeek-V2 §3.1.2 trains with alpha_1 = 0.003 (and alpha_2 = 0.05, alpha_3 = 0.02 for the device and
#   communication losses, which have no config field); the released config has aux_loss_alpha 0.001. V2-Lite's
#   alpha_1 = 0.001 (App. B.1) agrees with its config.
# - DeepSeek-V3 §4.2 sets the sequence-wise balance factor alpha = 0.0001; the released config has 0.001.
PAPER_VALUES: dict[str, dict[str, Any]] = {
    "deepseek-v2": dict(aux_loss_alpha=0.003),
    "deepseek-v3": dict(aux_loss_alpha=0.0001),
}
