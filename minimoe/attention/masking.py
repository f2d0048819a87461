"""What every attention layer shares: the mask ``Transformer.forward`` builds once, and the one masked attention.

The contract (docs/internals.md): an attention module is called ``attn(x, cos_sin, mask, cache)``. ``cos_sin`` is
the RoPE table of the T new positions and ``mask`` says which keys each new query may see; the caller prepares both
once for all layers (``attention_inputs``, as DeepSeek-V3's ``inference/model.py`` builds ``freqs_cis`` and
``mask`` in ``Transformer.forward``). ``mask`` None means plain causal attention, aligned to the last key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimoe.attention.rope import RotaryEmbedding


def causal_allowed(batch: int, n_new: int, n_cached: int, device: torch.device) -> torch.Tensor:
    """``allowed[b, t, s] = s ≤ n_cached + t``: the T new queries see every earlier key and themselves.

    Shapes: -> (B, T, S) bool, S = n_cached + n_new (a broadcast view).
    """
    S = n_cached + n_new
    key_index = torch.arange(S, device=device)  # (S,)
    query_index = torch.arange(n_cached, S, device=device)  # (T,)
    return (key_index[None, :] <= query_index[:, None]).expand(batch, n_new, S)


def causal_mask(batch: int, n_new: int, n_cached: int, padding_mask: torch.Tensor | None,
                device: torch.device) -> torch.Tensor | None:
    """The mask of one forward: None when plain causal attention needs none (no padding, and no cache or a single
    new token), else ``allowed[b, t, s]``: key s is not in the future of new query t (causal by storage order) and
    is a real token (``padding_mask``, True = real, over the cached and new keys).

    Shapes: padding_mask (B, S) bool or None, S = n_cached + n_new -> None or (B, T, S) bool.
    """
    if padding_mask is None and (n_cached == 0 or n_new == 1):
        return None
    allowed = causal_allowed(batch, n_new, n_cached, device)  # (B, T, S)
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, :].to(device)
    return allowed


def attention_inputs(rope: RotaryEmbedding, batch: int, n_new: int, n_cached: int = 0,
                     position_ids: torch.Tensor | None = None, padding_mask: torch.Tensor | None = None,
                     device: torch.device | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                  torch.Tensor | None]:
    """``(cos_sin, mask)`` for T = ``n_new`` positions after ``n_cached`` cached ones, what ``Transformer.forward``
    computes once and hands to every layer; positions default to ``n_cached + arange(T)`` in every row. Nothing is
    checked here: ``Transformer.forward`` validates its inputs before calling this.

    Shapes: position_ids (B, T) or None, padding_mask (B, S) or None -> cos_sin 2 × (B, T, d_r/2), mask (B, T, S)
    bool or None.
    """
    if position_ids is None:
        position_ids = torch.arange(n_cached, n_cached + n_new, device=device).expand(batch, n_new)  # (B, T)
    return rope.cos_sin(position_ids), causal_mask(batch, n_new, n_cached, padding_mask, device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
           causal: bool = True) -> torch.Tensor:
    """``o = softmax(q kᵀ · scale, masked) v`` (Vaswani et al. 2017, Eq. (1)): the one masked attention of the kit,
    one ``F.scaled_dot_product_attention`` call (a fused kernel).

    ``mask`` None = causal, aligned to the last key (the T new queries are the last T of S positions; a single query
    sees every key); with ``causal=False`` as well, every query sees every key (absorbed MLA's decoding step, whose
    query rows are H heads of one position). Else ``mask`` (True = allowed) broadcasts to the scores; disallowed entries get the dtype's most
    negative finite value, so a query with no allowed key (a left-padding position) averages all keys instead of
    returning NaN. With fewer key/value heads n_g than query heads H (GQA, MQA), query head i reads key/value head
``i // (H / n_g)`` (DeepSeek-V2 Eq. (7); HF ``repeat_kv`` order).

    The fused CPU kernel needs one head width: when d_v ≠ d (MLA: v_head_dim vs qk_head_dim, or the latent d_c vs
    d_c + d_r) the narrower side is zero-padded, which changes neither scores nor outputs (measured 4× faster than
    the unfused path on 4×8×256² scores).

    Shapes: q (B, H, T, d), k (B, n_g, S, d), v (B, n_g, S, d_v), mask broadcastable to (B, H, T, S) bool or
    None -> (B, H, T, d_v).
    """
    T, S, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    if mask is None and causal and T not in (1, S):
        mask = causal_allowed(1, T, S - T, q.device)  # (1, T, S): new queries after cached keys
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
    width = max(q.shape[-1], d_v)
    q, k, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None and causal and T > 1, scale=scale,
                                       enable_gqa=k.shape[1] != q.shape[1])
    return o[..., :d_v]  # (B, H, T, d_v)
