"""Attention: RoPE and YaRN, the MHA/GQA/MQA baseline, Multi-head Latent Attention, and the KV cache."""

from minimoe.attention.cache import LayerCache
from minimoe.attention.masking import check_attention_inputs, masked_softmax
from minimoe.attention.mha import MultiHeadAttention, grouped_attention
from minimoe.attention.mla import MODES, MultiHeadLatentAttention, mla_absorbed_scores
from minimoe.attention.rope import (
    RotaryEmbedding,
    apply_rope,
    rope_inv_freq,
    softmax_scale,
    yarn_find_correction_range,
    yarn_get_mscale,
    yarn_linear_ramp_mask,
)

__all__ = [
    "MODES",
    "LayerCache",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "RotaryEmbedding",
    "apply_rope",
    "check_attention_inputs",
    "grouped_attention",
    "masked_softmax",
    "mla_absorbed_scores",
    "rope_inv_freq",
    "softmax_scale",
    "yarn_find_correction_range",
    "yarn_get_mscale",
    "yarn_linear_ramp_mask",
]
