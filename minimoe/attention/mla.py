"""Multi-head Latent Attention (MLA): DeepSeek-V2 §2.1.2–2.1.3 and App. C; DeepSeek-V3 §2.1.1, Eq. (1)–(11).

Keys and values are rebuilt from one small latent ``c_kv`` per token, and position enters only through a separate
RoPE part of width d_r whose key ``k_rope`` is shared by all heads. Two ways to run the same weights:

* ``mode="naive"`` expands the latent to full per-head keys and values and caches those (H·(n+r) + H·v elements per
  token per layer; 40,960 for V3).
* ``mode="absorbed"`` caches only ``c_kv`` and ``k_rope`` (d_c + d_r = 576 for V3), folds W^UK into the query and
  applies W^UV after the weighted sum (DeepSeek-V2 App. C; DeepSeek-V3 ``inference/model.py``, ``attn_impl="absorb"``).
  Nothing is re-expanded: a decoding step costs O(S·H·(d_c + d_r)) and reads only the latent cache.

Names: n = ``qk_nope_head_dim`` (d_h of the paper), r = d_r = ``qk_rope_head_dim``, v = ``v_head_dim``.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.attention.cache import LayerCache
from minimoe.attention.masking import attend, causal_allowed
from minimoe.attention.rope import apply_rope, softmax_scale
from minimoe.norm import RMSNorm

MODES = ("naive", "absorbed")
# DeepSeek-V3 inference/model.py and transformers build q_norm and kv_norm with eps 1e-6 whatever rms_norm_eps says.
LATENT_NORM_EPS = 1e-6


def mla_absorbed_scores(q_latent: torch.Tensor, q_rope: torch.Tensor, c_kv: torch.Tensor,
                        k_rope: torch.Tensor) -> torch.Tensor:
    """``q^Cᵀ k^C + q^Rᵀ k^R = (W^UKᵀ q^C)ᵀ c^KV + q^Rᵀ k^R`` (DeepSeek-V2 §2.1.3, App. C): the latent query
    ``q_latent = W^UKᵀ q^C`` meets the cached latent directly. The scores on their own, for plots and labs;
    ``MultiHeadLatentAttention`` computes the same inside one fused ``attend`` over ``[c^KV; k^R]``.

    Shapes:
        q_latent: (B, T, H, d_c); q_rope: (B, T, H, r); c_kv: (B, S, d_c); k_rope: (B, S, r); returns (B, H, T, S).
    """
    return torch.einsum("bthc,bsc->bhts", q_latent, c_kv) + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)


class MultiHeadLatentAttention(nn.Module):
    """MLA with optional query compression, decoupled RoPE and a naive or absorbed KV cache.

    Parameters (DeepSeek-V3 ``inference/model.py`` names, HF layouts): ``wq`` (d → H·(n+r)) when
    ``q_lora_rank is None``, else ``wq_a`` (d → d'_c) = W^DQ, ``q_norm``, ``wq_b`` (d'_c → H·(n+r)) = [W^UQ; W^QR];
    ``wkv_a`` (d → d_c + r) = [W^DKV; W^KR]; ``kv_norm``; ``wkv_b`` (d_c → H·(n+v)) = [W^UK; W^UV] per head;
    ``wo`` (H·v → d) = W^O. ``mode`` may be switched at any time; the cache it fills must match it.
    """

    def __init__(self, cfg, mode: str = "naive") -> None:
        super().__init__()
        self.mode = mode
        self.hidden_size, self.n_heads = cfg.hidden_size, cfg.num_attention_heads
        self.q_lora_rank, self.kv_lora_rank, self.v_head_dim = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.v_head_dim
        self.qk_nope_head_dim, self.qk_rope_head_dim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        H, d, qk_head_dim = cfg.num_attention_heads, cfg.hidden_size, cfg.qk_head_dim
        if cfg.q_lora_rank is None:
            self.wq = nn.Linear(d, H * qk_head_dim, bias=False)
        else:
            self.wq_a = nn.Linear(d, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(d, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=cfg.attention_bias)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.wo = nn.Linear(H * cfg.v_head_dim, d, bias=cfg.attention_bias)
        self.rope_interleave = cfg.rope_interleave
        self.scale = softmax_scale(cfg)

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode ({value!r}) must be one of {MODES}")
        self._mode = value

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """Causal MLA of the T new positions over the cached and new ones.

        ``cos_sin`` is the RoPE table of the new positions and ``mask`` the keys each may see (None = plain causal),
        both prepared once by the caller (``Transformer.forward``, or ``minimoe.attention.attention_inputs``).

        Shapes:
            x: (B, T, d); cos_sin: 2 × (B, T, r/2); mask: (B, T, S) bool or None; returns (B, T, d).
        """
        cos, sin = cos_sin
        B, T, _ = x.shape
        H, n, r = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        interleave = self.rope_interleave
        # Eq. (12)–(13): c^Q = W^DQ h, [q^C; q^R] = [W^UQ; W^QR] c^Q (or W^Q h without compression), q_norm on c^Q
        q = self.wq(x) if self.q_lora_rank is None else self.wq_b(self.q_norm(self.wq_a(x)))  # (B, T, H·(n+r))
        q_nope, q_rope = q.view(B, T, H, n + r).split((n, r), dim=-1)  # (B, T, H, n), (B, T, H, r)
        q_rope = apply_rope(q_rope, cos, sin, interleave)  # Eq. (14): q^R = RoPE(W^QR c^Q)
        # Eq. (9) and (15): c^KV = W^DKV h (then kv_norm), k^R = RoPE(W^KR h) — one k^R per token, for all heads
        c_kv, k_rope = self.wkv_a(x).split((self.kv_lora_rank, r), dim=-1)  # (B, T, d_c), (B, T, r)
        c_kv = self.kv_norm(c_kv)
        k_rope = apply_rope(k_rope, cos, sin, interleave)  # (B, T, r)
        if self.mode == "naive":
            o = self._naive(q_nope, q_rope, c_kv, k_rope, cache, mask)
        else:
            o = self._absorbed(q_nope, q_rope, c_kv, k_rope, cache, mask)
        # Eq. (19): u_t = W^O [o_{t,1}; …; o_{t,n_h}]
        return self.wo(o.reshape(B, T, H * self.v_head_dim))

    def _naive(self, q_nope, q_rope, c_kv, k_rope, cache, mask) -> torch.Tensor:
        """Expand keys and values per head, cache them, attend. Shapes: returns (B, T, H, v)."""
        B, T, _ = c_kv.shape
        H, n, r = self.n_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        # Eq. (10)–(11): k^C = W^UK c^KV, v^C = W^UV c^KV
        k_nope, v = self.wkv_b(c_kv).view(B, T, H, n + self.v_head_dim).split((n, self.v_head_dim), dim=-1)
        # Eq. (17): k_{t,i} = [k^C_{t,i}; k^R_t]
        k = torch.cat((k_nope, k_rope[:, :, None].expand(B, T, H, r)), dim=-1)  # (B, T, H, n+r)
        if cache is not None:
            full = cache.append(k=k, v=v)
            k, v = full["k"], full["v"]  # (B, S, H, n+r), (B, S, H, v)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, T, H, n+r), Eq. (16): q_{t,i} = [q^C_{t,i}; q^R_{t,i}]
        # Eq. (18): o_{t,i} = Σ_s softmax_s(q_{t,i}ᵀ k_{s,i} · scale) v^C_{s,i}, scale = (n+r)^-½ (· mscale² for YaRN)
        mask = None if mask is None else mask[:, None]  # (B, 1, T, S): the same for every head
        o = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, self.scale)  # (B, H, T, v)
        return o.transpose(1, 2)  # (B, T, H, v)

    def _absorbed(self, q_nope, q_rope, c_kv, k_rope, cache, mask) -> torch.Tensor:
        """Attend in the latent space; only (c_kv, k_rope) is cached. Shapes: returns (B, T, H, v)."""
        B, T, H, _ = q_nope.shape
        n = self.qk_nope_head_dim
        w_ukv = self.wkv_b.weight.view(H, n + self.v_head_dim, self.kv_lora_rank)  # (H, n+v, d_c)
        w_uk, w_uv = w_ukv[:, :n], w_ukv[:, n:]  # (H, n, d_c), (H, v, d_c)
        # App. C: fold W^UK into the query, q_latent_{t,i} = W^UKᵀ_i q^C_{t,i}, so that q^Cᵀ k^C = q_latentᵀ c^KV
        q_latent = (q_nope.transpose(1, 2) @ w_uk).transpose(1, 2)  # (B, T, H, d_c)
        if cache is not None:
            full = cache.append(c_kv=c_kv, k_rope=k_rope)
            c_kv, k_rope = full["c_kv"], full["k_rope"]  # (B, S, d_c), (B, S, r)
        S = c_kv.shape[1]
        # every head meets the same latent keys [c^KV; k^R]: the H·T queries are the rows of one key/value head
        q = torch.cat((q_latent, q_rope), dim=-1).transpose(1, 2).reshape(B, 1, H * T, -1)  # (B, 1, H·T, d_c+r)
        k = torch.cat((c_kv, k_rope), dim=-1)[:, None]  # (B, 1, S, d_c+r)
        if mask is None and T > 1:
            mask = causal_allowed(B, T, S - T, c_kv.device)  # (B, T, S): the H·T rows are not aligned to the keys
        if mask is not None:
            mask = mask[:, None].expand(B, H, T, S).reshape(B, 1, H * T, S)  # (B, 1, H·T, S)
        # Eq. (18) in the latent: Σ_s p_s v^C_{s,i} = W^UV_i Σ_s p_s c^KV_s: weight the latents, expand once per query
        o_latent = attend(q, k, c_kv[:, None], mask, self.scale, causal=False).view(B, H, T, -1)  # (B, H, T, d_c)
        return (o_latent @ w_uv.transpose(1, 2)).transpose(1, 2)  # (B, T, H, v)
