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
from minimoe.attention.masking import attend
from minimoe.attention.rope import apply_rope, softmax_scale


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
        self.rope_interleave = cfg.rope_interleave
        self.scale = softmax_scale(cfg, self.head_dim)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """Causal self-attention of the T new positions over the cached and new ones; ``cos_sin`` and ``mask``
        (None = plain causal) come prepared, as for ``MultiHeadLatentAttention``.

        Shapes:
            x: (B, T, d); cos_sin: 2 × (B, T, d_h/2); mask: (B, T, S) bool or None; returns (B, T, d).
        """
        cos, sin = cos_sin
        B, T, _ = x.shape
        # Eq. (1)–(3) then RoPE: q_t = RoPE(W^Q h_t), k_t = RoPE(W^K h_t), v_t = W^V h_t
        q = apply_rope(self.wq(x).view(B, T, self.n_heads, self.head_dim), cos, sin, self.rope_interleave)
        k = apply_rope(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), cos, sin, self.rope_interleave)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, n_g, d_h)
        if cache is not None:
            full = cache.append(k=k, v=v)
            k, v = full["k"], full["v"]  # (B, S, n_g, d_h)
        # Eq. (4)–(7): o_{t,i} = Σ_s softmax_s(q_{t,i}ᵀ k_{s,g(i)} · scale) v_{s,g(i)}, g(i) = i // (H / n_g)
        mask = None if mask is None else mask[:, None]  # (B, 1, T, S): the same for every head
        o = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale)  # (B, H, T, d_h)
        # Eq. (8): u_t = W^O [o_{t,1}; …; o_{t,n_h}]
        return self.wo(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
