"""Attention: RoPE and YaRN, the MHA/GQA/MQA baseline, Multi-head Latent Attention, and the KV cache.

Every attention module is called ``attn(x, cos_sin, mask, cache)``; ``attention_inputs`` prepares ``cos_sin`` and
``mask`` once (``Transformer.forward`` does, for all layers), and ``attend`` is the one masked attention.
"""

from minimoe.attention.cache import LayerCache
from minimoe.attention.masking import attend, attention_inputs, causal_mask
from minimoe.attention.mha import MultiHeadAttention
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
    "attend",
    "attention_inputs",
    "causal_mask",
    "mla_absorbed_scores",
    "rope_inv_freq",
    "softmax_scale",
    "yarn_find_correction_range",
    "yarn_get_mscale",
    "yarn_linear_ramp_mask",
]
