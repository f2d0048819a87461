"""minimoe: Multi-head Latent Attention, DeepSeekMoE and GRPO from first principles, small enough to read.

Shape legend (used in every ``Shapes:`` block, reshape comment and einsum string of the package):

    B   batch
    T   time: the new positions of this call
    S   cached + new positions
    H   attention heads
    d   model width (``hidden_size``; DeepSeek-V2 §2.1's d)
    d_h head dim
    d_c KV latent (``kv_lora_rank``)
    d_r RoPE dims (``qk_rope_head_dim``)
    E   routed experts
    K   experts per token
    D   MTP depth (``num_nextn_predict_layers``; DeepSeek-V3 §2.2's D)
    G   completions per prompt (``group_size``; DeepSeekMath §4.1's G)

Other counts have names, never a reused letter: ``n_g`` KV heads and ``heads_per_kv`` = H / n_g query heads per KV
head (GQA), ``experts_per_group``, ``n_devices``.

Public API::

    cfg = minimoe.ModelConfig.from_preset("tiny-v3")
    model = minimoe.Transformer(cfg)
    out = model(tokens)                                  # ModelOutput: .logits (B, T, V), .routing, .balance_loss,
                                                         # .mtp_loss, .aux_loss (their sum)
    model.update_routing_bias(out.routing)               # auxiliary-loss-free balancing (DeepSeek-V3 §2.1.2)
    minimoe.generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=8)
    minimoe.generate(model, prompts, 8, speculative="mtp")  # with num_nextn_predict_layers > 0: MTP drafts
    minimoe.count_params(cfg), minimoe.kv_cache_per_token(cfg, attention="mla")
    minimoe.interop.from_hf(hf_model)                    # imported on first use (it needs transformers)
"""

from __future__ import annotations

import importlib
from typing import Any

from minimoe.accounting import count_params, kv_cache_per_token
from minimoe.config import ModelConfig
from minimoe.generate import generate
from minimoe.model import ModelOutput, RoutingRecord, Transformer

__all__ = ["ModelConfig", "ModelOutput", "RoutingRecord", "Transformer", "count_params", "generate", "interop",
           "kv_cache_per_token"]


def __getattr__(name: str) -> Any:
    if name == "interop":  # lazy: importing minimoe must not import transformers
        return importlib.import_module("minimoe.interop")
    raise AttributeError(f"module 'minimoe' has no attribute {name!r}")
