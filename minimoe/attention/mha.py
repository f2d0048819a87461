"""The baseline MLA is measured against: multi-head attention with a KV cache, and its GQA / MQA variants.

MHA (Vaswani et al. 2017, Eq. (1); DeepSeek-V2 §2.1.1, Eq. (1)–(8)) gives every query head its own key and value
head. GQA (Ainslie et al. 2023) shares each key/value head among heads_per_kv = n_h / n_g query heads, MQA (Shazeer 2019) is
n_g = 1. The cache holds ``2·n_g·d_h`` elements per token per layer (DeepSeek-V2 Table 1), which is what MLA cuts.
RoPE turns the whole head (``cfg.baseline_head_dim``) in the layout ``cfg.rope_interleave`` names.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.attention.cache import LayerCache
from minimoe.attention.masking import causal_allowed, check_attention_inputs, masked_softmax
from minimoe.attention.rope import RotaryEmbedding, apply_rope, softmax_scale


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """``o_{t,i} = Σ_s softmax_s(q_{t,i}ᵀ k_{s,g(i)} · scale) v_{s,g(i)}`` with query head i using kv head
    ``g(i) = i // heads_per_kv`` (DeepSeek-V2 Eq. (7); HF ``repeat_kv`` order), without copying k and v
    heads_per_kv = H / n_g times. In the einsum strings n indexes the KV heads and g the query heads sharing one.

    Shapes:
        q: (B, T, H, d_h); k, v: (B, S, n_g, d_h); allowed: (B, T, S); returns (B, T, H, d_h).
    """
    B, T, H, d_h = q.shape
    n_g = k.shape[2]
    q = q.view(B, T, n_g, H // n_g, d_h)  # (B, T, n_g, heads_per_kv, d_h)
    scores = torch.einsum("btngd,bsnd->bngts", q, k) * scale  # (B, n_g, heads_per_kv, T, S)
    weights = masked_softmax(scores, allowed[:, None, None])  # (B, n_g, heads_per_kv, T, S)
    return torch.einsum("bngts,bsnd->btngd", weights, v).reshape(B, T, H, d_h)  # (B, T, H, d_h)


class MultiHeadAttention(nn.Module):
    """MHA / GQA / MQA with RoPE and a ``LayerCache`` holding rotated ``k`` and ``v`` (B, S, n_g, d_h).

    Parameters ``wq`` (d → H·d_h), ``wk``, ``wv`` (d → n_g·d_h), ``wo`` (H·d_h → d), HF ``q/k/v/o_proj`` layout.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.num_attention_heads, cfg.n_kv_heads, cfg.baseline_head_dim
        self.hidden_size = cfg.hidden_size
        bias = cfg.attention_bias
        self.wq = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(cfg.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.rope = RotaryEmbedding(self.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling,
                                    interleave=cfg.rope_interleave)
        self.scale = softmax_scale(cfg, self.head_dim)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None, cache: LayerCache | None = None,
                padding_mask: torch.Tensor | None = None, *,
                cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention of the T new positions over the cached and new ones.

        ``cos_sin`` and ``mask`` (None = plain causal) come prepared from ``Transformer.forward``; without
        ``cos_sin`` the inputs are checked and both derived here (as ``MultiHeadLatentAttention`` does).

        Shapes:
            x: (B, T, d); position_ids: (B, T); padding_mask: (B, S); cos_sin: 2 × (B, T, d_h/2);
            mask: (B, T, S) bool or None; returns (B, T, d).
        """
        if cos_sin is None:
            position_ids, mask = check_attention_inputs(x, self.hidden_size, position_ids, cache, padding_mask,
                                                        self.rope.max_position_embeddings)
            cos_sin = self.rope.cos_sin(position_ids)  # (B, T, d_h/2)
        cos, sin = cos_sin
        B, T, _ = x.shape
        # Eq. (1)–(3) then RoPE: q_t = RoPE(W^Q h_t), k_t = RoPE(W^K h_t), v_t = W^V h_t
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), cos, sin, self.rope.interleave)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), cos, sin, self.rope.interleave)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, n_g, d_h)
        if cache is not None:
            full = cache.append(k=k, v=v)
            k, v = full["k"], full["v"]  # (B, S, n_g, d_h)
        if mask is None:
            mask = causal_allowed(B, T, k.shape[1] - T, x.device)  # (B, T, S)
        o = grouped_attention(q, k, v, mask, self.scale)  # (B, T, H, d_h)
        # Eq. (8): u_t = W^O [o_{t,1}; …; o_{t,n_h}]
        return self.wo(o.reshape(B, T, self.n_heads * self.head_dim))
