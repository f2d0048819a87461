"""What every attention module does before and after its scores: check the inputs, resolve default positions,
build the causal + padding mask, and take a softmax that never returns NaN.

The contract (docs/internals.md): ``forward(x, position_ids=None, cache=None, padding_mask=None)``; positions default
to ``arange(len(cache), len(cache) + T)``; ``padding_mask`` (B, S) covers cached + new keys, True = real token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minimoe.attention.cache import LayerCache


def check_attention_inputs(x: torch.Tensor, width: int, position_ids: torch.Tensor | None,
                           cache: LayerCache | None, padding_mask: torch.Tensor | None,
                           max_positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the inputs of an attention module called on its own and return ``(position_ids, allowed)``.

    ``Transformer.forward`` does not call this per layer: it validates once and passes ``cos_sin`` and ``mask``
    down. Positions given here are checked against ``max_positions`` (one host sync, at this entry point only).

    ``allowed[b, t, s]`` is True when new query t of row b may attend key s: the key is not in the future
    (``s ≤ len(cache) + t``, causal by storage order) and is a real token (``padding_mask``).

    Shapes:
        x: (B, T, d); position_ids: (B, T) or None; padding_mask: (B, S) or None, S = len(cache) + T;
        returns position_ids (B, T) long and allowed (B, T, S) bool.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (B, T, d), got shape {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"x has width {x.shape[-1]}, but hidden_size is {width}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    B, T, _ = x.shape
    n_cached = 0 if cache is None else len(cache)
    if cache is not None and n_cached and next(iter(cache.tensors.values())).shape[0] != B:
        raise ValueError(f"cache holds batch size {next(iter(cache.tensors.values())).shape[0]}, x has {B}")
    if position_ids is None:
        if max_positions is not None and n_cached + T > max_positions:
            raise ValueError(f"positions [0, {n_cached + T}) ({n_cached} cached + {T} new) exceed "
                             f"max_position_embeddings={max_positions}")
        position_ids = torch.arange(n_cached, n_cached + T, device=x.device).expand(B, T)  # (B, T)
    elif position_ids.shape != (B, T) or position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise ValueError(f"position_ids must be an integer tensor of shape (B, T) = {(B, T)}, "
                         f"got {position_ids.dtype} {tuple(position_ids.shape)}")
    elif max_positions is not None and position_ids.numel():
        low, high = torch.aminmax(position_ids)
        if low < 0 or high >= max_positions:
            raise ValueError(f"position_ids must lie in [0, max_position_embeddings={max_positions}); "
                             f"got [{int(low)}, {int(high)}]")
    S = n_cached + T
    allowed = causal_allowed(B, T, n_cached, x.device)  # (B, T, S)
    if padding_mask is not None:
        if padding_mask.shape != (B, S) or padding_mask.dtype != torch.bool:
            raise ValueError(f"padding_mask must be a bool tensor of shape (B, S) = {(B, S)} over cached and new "
                             f"keys, got {padding_mask.dtype} {tuple(padding_mask.shape)}")
        allowed = allowed & padding_mask[:, None, :].to(x.device)  # (B, T, S)
    return position_ids, allowed


def masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with disallowed entries set to the dtype's most negative finite value.

    A finite fill (not −inf) keeps rows with no allowed key (a left-padding query) finite: they average all keys
    uniformly instead of producing NaN; such rows are ignored downstream.

    Shapes:
        scores: (B, ..., T, S); allowed: broadcastable to scores; returns scores' shape.
    """
    wide = torch.promote_types(scores.dtype, torch.float32)  # softmax in float32 for half types, as HF eager does
    return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(dim=-1, dtype=wide).to(scores.dtype)


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
    """What ``Transformer.forward`` builds once for all layers: None when plain causal attention needs no mask (no
    padding and either no cache or a single new token), else ``allowed`` (B, T, S) bool as in
    ``check_attention_inputs``.

    Shapes: padding_mask (B, S) bool or None, S = n_cached + n_new -> None or (B, T, S) bool.
    """
    if padding_mask is None and (n_cached == 0 or n_new == 1):
        return None
    allowed = causal_allowed(batch, n_new, n_cached, device)  # (B, T, S)
    if padding_mask is not None:
        allowed = allowed & padding_mask[:, None, :].to(device)
    return allowed


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """``softmax(q kᵀ · scale, masked) v`` with ``F.scaled_dot_product_attention`` (one fused kernel).

    ``allowed`` None = causal, aligned to the last key (the T new queries are the last T of S positions; with T = 1
    every key is allowed). Disallowed entries get the dtype's most negative finite value, as ``masked_softmax``
    does, so a query with no allowed key averages all keys instead of returning NaN.

    When d_v ≠ d (MLA: v_head_dim vs qk_head_dim) the narrower side is zero-padded: ``torch`` has a fused CPU
    kernel only for equal head dims, and measured 4× faster than the fallback on 4×8×256² scores.

    Shapes: q (B, H, T, d), k (B, H, S, d), v (B, H, S, d_v), allowed (B, T, S) bool or None -> (B, H, T, d_v).
    """
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if d_v != d_qk:  # the fused CPU kernel needs one head dim: zero-pad the narrower side (scores/outputs unchanged)
        width = max(d_qk, d_v)
        q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
        return attend(q, k, v, allowed, scale)[..., :d_v]
    T, S = q.shape[-2], k.shape[-2]
    if allowed is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1 and T == S, scale=scale) if T in (1, S) \
            else attend(q, k, v, causal_allowed(q.shape[0], T, S - T, q.device), scale)
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, torch.finfo(q.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None], scale=scale)
