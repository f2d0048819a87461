"""A DeepSeek-style causal language model: composition only.

``Block`` is the pre-norm residual pair of DeepSeek-V2 §2 (Figure 2): ``x + attn(norm(x))`` then
``x + ffn(norm(x))``, the attention being Multi-head Latent Attention (or the MHA/GQA/MQA baseline) and the FFN a
dense SwiGLU ``MLP`` for the first ``first_k_dense_replace`` layers, then ``DeepSeekMoE`` (DeepSeek-V3 §4.2).
``Transformer`` adds the token embedding, the final RMSNorm and the output head. Every piece lives in its own module:
``minimoe.attention``, ``minimoe.moe``, ``minimoe.norm``.
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.attention.cache import LayerCache
from minimoe.attention.mha import MultiHeadAttention
from minimoe.attention.mla import MultiHeadLatentAttention
from minimoe.config import ModelConfig
from minimoe.moe.experts import MLP, DeepSeekMoE
from minimoe.moe.gate import Router
from minimoe.norm import RMSNorm

ATTN_MODES = ("naive", "absorbed")

__all__ = ["MLP", "Block", "RMSNorm", "Transformer"]


class Block(nn.Module):
    """One transformer layer: attention and feed-forward, each behind an RMSNorm and inside a residual."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, attn_mode: str = "naive") -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.attention_type == "mla":
            self.attn = MultiHeadLatentAttention(cfg, mode=attn_mode)
        else:
            self.attn = MultiHeadAttention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(layer_idx):
            self.ffn = DeepSeekMoE(cfg)
        else:
            self.ffn = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None, cache: LayerCache | None = None,
                padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Shapes: x (B, T, D), position_ids (B, T), padding_mask (B, S) -> (B, T, D)."""
        x = x + self.attn(self.attn_norm(x), position_ids=position_ids, cache=cache, padding_mask=padding_mask)
        return x + self.ffn(self.ffn_norm(x))


class Transformer(nn.Module):
    """Causal LM: ``embed`` → ``layers`` → ``norm`` → ``head``; ``model(tokens)`` returns next-token logits.

    ``attn_mode`` ("naive" | "absorbed") picks how MLA computes attention (DeepSeek-V2 §2.1.3, App. C); both modes
    share the weights, so ``set_attn_mode`` switches at any time (but not in the middle of a cached generation:
    the two modes cache different tensors). Weights are initialised from N(0, initializer_range²), norms to one.
    """

    def __init__(self, cfg: ModelConfig, attn_mode: str = "naive") -> None:
        super().__init__()
        _check_attn_mode(cfg, attn_mode)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i, attn_mode) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_word_embeddings:
            self.head.weight = self.embed.weight

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def new_cache(self) -> list[LayerCache]:
        """An empty cache, one ``LayerCache`` per layer, to pass to ``forward`` (it fills up as it is used)."""
        return [LayerCache() for _ in self.layers]

    def set_attn_mode(self, mode: str) -> None:
        """Switch every MLA layer to ``mode`` ("naive" | "absorbed"); the weights are unchanged."""
        _check_attn_mode(self.cfg, mode)
        for layer in self.layers:
            if isinstance(layer.attn, MultiHeadLatentAttention):
                layer.attn.mode = mode

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for every position.

        ``cache`` (from ``new_cache()``) holds the earlier positions; ``padding_mask`` covers them and the new ones
        (True = real token); ``position_ids`` default to ``len(cache) + arange(T)`` for every row.

        Shapes: tokens (B, T) integer, position_ids (B, T), padding_mask (B, S) bool -> logits (B, T, V).
        """
        self._check_inputs(tokens, cache)
        x = self.embed(tokens)  # (B, T, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, position_ids=position_ids, cache=None if cache is None else cache[i],
                      padding_mask=padding_mask)
        return self.head(self.norm(x))  # (B, T, V)

    def _check_inputs(self, tokens: torch.Tensor, cache: list[LayerCache] | None) -> None:
        cfg = self.cfg
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor of token ids (e.g. torch.long), got {tokens.dtype}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}; "
                             "for one sequence use tokens[None]")
        if tokens.numel() > 0 and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}: use model.new_cache()")
        past = 0 if cache is None else len(cache[0])
        if past + tokens.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"sequence length ({past} cached + {tokens.shape[1]} new) exceeds "
                             f"max_position_embeddings ({cfg.max_position_embeddings})")


def _check_attn_mode(cfg: ModelConfig, mode: str) -> None:
    if mode not in ATTN_MODES:
        raise ValueError(f"attn_mode ({mode!r}) must be one of {ATTN_MODES}")
    if mode == "absorbed" and cfg.attention_type != "mla":
        raise ValueError(f"attn_mode 'absorbed' needs attention_type='mla', got {cfg.attention_type!r}")
