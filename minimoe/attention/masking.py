"""What every attention module does before and after its scores: check the inputs, resolve default positions,
build the causal + padding mask, and take a softmax that never returns NaN.

The contract (docs/internals.md): ``forward(x, position_ids=None, cache=None, padding_mask=None)``; positions default
to ``arange(len(cache), len(cache) + T)``; ``padding_mask`` (B, S) covers cached + new keys, True = real token.
"""

from __future__ import annotations

import torch

from minimoe.attention.cache import LayerCache


def check_attention_inputs(x: torch.Tensor, width: int, position_ids: torch.Tensor | None,
                           cache: LayerCache | None, padding_mask: torch.Tensor | None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the inputs and return ``(position_ids, allowed)``.

    ``allowed[b, t, s]`` is True when new query t of row b may attend key s: the key is not in the future
    (``s ≤ len(cache) + t``, causal by storage order) and is a real token (``padding_mask``).

    Shapes:
        x: (B, T, D); position_ids: (B, T) or None; padding_mask: (B, S) or None, S = len(cache) + T;
        returns position_ids (B, T) long and allowed (B, T, S) bool.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D (B, T, D), got shape {tuple(x.shape)}")
    if x.shape[-1] != width:
        raise ValueError(f"x has width {x.shape[-1]}, but hidden_size is {width}")
    if not x.is_floating_point():
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    B, T, _ = x.shape
    n_cached = 0 if cache is None else len(cache)
    if cache is not None and n_cached and next(iter(cache.tensors.values())).shape[0] != B:
        raise ValueError(f"cache holds batch size {next(iter(cache.tensors.values())).shape[0]}, x has {B}")
    if position_ids is None:
        position_ids = torch.arange(n_cached, n_cached + T, device=x.device).expand(B, T)  # (B, T)
    elif position_ids.shape != (B, T) or position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise ValueError(f"position_ids must be an integer tensor of shape (B, T) = {(B, T)}, "
                         f"got {position_ids.dtype} {tuple(position_ids.shape)}")
    S = n_cached + T
    key_index = torch.arange(S, device=x.device)  # (S,)
    query_index = torch.arange(n_cached, S, device=x.device)  # (T,)
    allowed = (key_index[None, :] <= query_index[:, None]).expand(B, T, S)  # (B, T, S)
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
