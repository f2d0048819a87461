"""Shared by the minimoe.attention tests: small MLA/MHA configs and modules, called as ``Transformer.forward``
calls them (inputs are checked once there, tests/test_model.py, not by the layers)."""

import torch

from minimoe.attention import MultiHeadAttention, MultiHeadLatentAttention, RotaryEmbedding, attention_inputs
from minimoe.config import ModelConfig

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 0.707}
BASE = {"vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
        "max_position_embeddings": 256}


def mla_cfg(q_lora_rank=None, interleave=True, rope_scaling=YARN, **kw):
    return ModelConfig(**{**BASE, **kw}, q_lora_rank=q_lora_rank, rope_interleave=interleave,
                       rope_scaling=rope_scaling)


ROPES = {}  # module -> its config's RotaryEmbedding


def run(module, x, position_ids=None, cache=None, padding_mask=None):
    """Call an attention module as ``Transformer.forward`` does: RoPE table and mask prepared by the caller."""
    past = 0 if cache is None else len(cache)
    cos_sin, mask = attention_inputs(ROPES[module], x.shape[0], x.shape[1], past, position_ids,
                                     padding_mask)
    return module(x, cos_sin, mask, cache)


def build(kind, dtype=torch.float32, **kw):
    """A seeded attention module: 'mla-naive', 'mla-absorbed', 'mha', 'gqa', 'mqa'."""
    torch.manual_seed(0)
    if kind.startswith("mla"):
        cfg = mla_cfg(**kw)
        module = MultiHeadLatentAttention(cfg, mode=kind.split("-")[1])
    else:
        n_kv = {"mha": None, "gqa": 2, "mqa": 1}[kind]
        cfg = mla_cfg(**kw).replace(attention_type="mha", num_key_value_heads=n_kv)
        module = MultiHeadAttention(cfg)
    ROPES[module] = RotaryEmbedding.of(cfg)  # the table the model would hand it
    return module.to(dtype)


KINDS = ["mha", "gqa", "mqa", "mla-naive", "mla-absorbed"]
