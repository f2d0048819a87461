"""A DeepSeek-style causal language model: composition only.

``Block`` is the pre-norm residual pair of DeepSeek-V2 §2 (Figure 2): ``x + attn(norm(x))`` then
``x + ffn(norm(x))``, the attention being Multi-head Latent Attention (or the MHA/GQA/MQA baseline) and the FFN a
dense SwiGLU ``MLP`` for the first ``first_k_dense_replace`` layers, then ``DeepSeekMoE`` (DeepSeek-V3 §4.2).
``Transformer`` adds the token embedding, the final RMSNorm and the output head. Every piece lives in its own module:
``minimoe.attention``, ``minimoe.moe``, ``minimoe.norm``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from minimoe.attention.cache import LayerCache
from minimoe.attention.masking import attention_inputs
from minimoe.attention.mha import MultiHeadAttention
from minimoe.attention.mla import MODES, MultiHeadLatentAttention
from minimoe.attention.rope import RotaryEmbedding
from minimoe.config import ModelConfig
from minimoe.moe.balance import expert_load, routing_balance_loss, update_selection_bias
from minimoe.moe.experts import MLP, DeepSeekMoE
from minimoe.moe.gate import Router, RoutingRecord
from minimoe.mtp import mtp_combine, mtp_loss
from minimoe.norm import RMSNorm

__all__ = ["MLP", "Block", "MTPModule", "ModelOutput", "RMSNorm", "RoutingRecord", "Transformer"]


@dataclass
class ModelOutput:
    """What ``Transformer.forward`` returns; ``model(tokens).logits`` is the way to get logits.

    ``routing`` holds one ``RoutingRecord`` per MoE layer in layer order ([] for a dense model or an empty batch).
    The two auxiliary losses come apart, each with its graph, or 0: ``balance_loss`` is the balance loss the config
    asks for (``aux_loss_alpha``, ``seq_aux``; ``minimoe.moe.routing_balance_loss``) and ``mtp_loss`` = λ · L_MTP
    (DeepSeek-V3 Eq. (25), ``minimoe.mtp.mtp_loss``); ``aux_loss`` is their sum, what a training loop adds to its
    own loss (``minimoe.optim.training_step`` does), which trains the MTP modules too.

    Multi-token prediction (``num_nextn_predict_layers`` = D > 0, forward without a cache): ``mtp_logits[k - 1]``
    is module k's output, one entry per position i = 0 … T − k − 1 predicting token i + k + 1 (a list, since the
    lengths differ). ``hidden`` is the main model's last hidden state before the final norm, h^0, which the first
    MTP module reads.

    Shapes: logits (B, T, V); balance_loss (); mtp_logits D × (B, T − k, V); mtp_loss (); hidden (B, T, d).
    """

    logits: torch.Tensor
    routing: list[RoutingRecord] = field(default_factory=list)
    balance_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    mtp_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    hidden: torch.Tensor | None = None

    @property
    def aux_loss(self) -> torch.Tensor:
        """``balance_loss + mtp_loss``: everything the model adds to a training loop's loss. Shapes: ()."""
        return self.balance_loss + self.mtp_loss


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

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> tuple[torch.Tensor, RoutingRecord | None]:
        """The layer's output and its routing; ``cos_sin`` and ``mask`` come from ``Transformer.forward``.

        Shapes: x (B, T, d), cos_sin 2 × (B, T, d_r/2), mask (B, T, S) bool or None (= causal)
        -> (B, T, d) and the MoE layer's RoutingRecord (None for a dense FFN)."""
        x = x + self.attn(self.attn_norm(x), cos_sin, mask, cache)
        if isinstance(self.ffn, DeepSeekMoE):
            h, record = self.ffn.forward_routed(self.ffn_norm(x), self.layer_idx)
            return x + h, record
        return x + self.ffn(self.ffn_norm(x)), None


class MTPModule(nn.Module):
    """The k-th multi-token prediction module (DeepSeek-V3 §2.2, Figure 3): the two RMSNorms and the projection M_k of
    Eq. (21), its own block TRM_k (attention + the FFN of the main model's last layer, Eq. (22)) and the norm before
    the shared output head (Eq. (23); DeepSeek's checkpoint calls it ``shared_head.norm``). The embedding and the
    head themselves are the main model's, passed in.
    """

    def __init__(self, cfg: ModelConfig, depth: int, attn_mode: str = "naive") -> None:
        super().__init__()
        self.depth = depth  # k = 1 … D
        self.norm_h = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.norm_e = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)  # M_k: (d, 2d)
        self.block = Block(cfg, cfg.num_hidden_layers - 1, attn_mode)  # the last layer's type (V3: MoE)
        self.block.layer_idx = cfg.num_hidden_layers + depth - 1  # its routing is reported after the main layers'
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, h_prev: torch.Tensor, emb_next: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None) -> tuple[torch.Tensor, RoutingRecord | None]:
        """h^k (before the norm) and the block's routing, from h^{k−1} and the embeddings of the tokens k ahead.

        Shapes: h_prev (B, n, d), emb_next (B, n, d), cos_sin 2 × (B, n, d_r/2), mask (B, n, n) or None
        -> (B, n, d) and a RoutingRecord or None."""
        h = mtp_combine(h_prev, emb_next, self.norm_h, self.norm_e, self.proj)  # Eq. (21)
        return self.block(h, cos_sin, mask)  # Eq. (22)


class Transformer(nn.Module):
    """Causal LM: ``embed`` → ``layers`` → ``norm`` → ``head``; ``model(tokens).logits`` are next-token logits.

    ``attn_mode`` ("naive" | "absorbed") picks how MLA computes attention (DeepSeek-V2 §2.1.3, App. C); both modes
    share the weights, so ``set_attn_mode`` (or, for a block of code, ``attention_mode``) switches at any time (but
    not in the middle of a cached generation: the two modes cache different tensors). Weights are initialised from N(0, initializer_range²), norms to one.

    One forward is one pass with no hidden state: inputs are validated once, positions, the RoPE table (as
    DeepSeek-V3's ``freqs_cis``) and the mask are computed once and passed to every layer, and the routing of each
    MoE layer comes back in ``ModelOutput.routing``. The selection bias moves only by ``update_routing_bias``.

    With ``num_nextn_predict_layers`` = D > 0 the model also holds ``mtp``, D ``MTPModule``s sharing ``embed`` and
    ``head`` (DeepSeek-V3 §2.2); ``mtp_step`` runs one of them, for training (in ``forward``) or to draft tokens
    (``minimoe.speculative``).
    """

    def __init__(self, cfg: ModelConfig, attn_mode: str = "naive") -> None:
        super().__init__()
        _check_attn_mode(cfg, attn_mode)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i, attn_mode) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg, k, attn_mode) for k in range(1, cfg.num_nextn_predict_layers + 1))
        self.rope = RotaryEmbedding.of(cfg)  # the one RoPE table; inv_freq: a non-persistent buffer
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
        """Switch every MLA layer, the MTP modules' included, to ``mode`` ("naive" | "absorbed"); the weights are
        unchanged."""
        _check_attn_mode(self.cfg, mode)
        for attn in self._mla_layers():
            attn.mode = mode

    @contextmanager
    def attention_mode(self, mode: str) -> Iterator[Transformer]:
        """``with model.attention_mode("absorbed"):`` runs every MLA layer, the MTP modules' included, in ``mode``
        inside the block, then gives each layer back its own mode (also when the block raises)."""
        _check_attn_mode(self.cfg, mode)
        layers = self._mla_layers()
        saved = [attn.mode for attn in layers]
        self.set_attn_mode(mode)
        try:
            yield self
        finally:
            for attn, own in zip(layers, saved):
                attn.mode = own

    def _mla_layers(self) -> list[MultiHeadLatentAttention]:
        blocks = [*self.layers, *(module.block for module in self.mtp)]
        return [block.attn for block in blocks if isinstance(block.attn, MultiHeadLatentAttention)]

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: list[LayerCache] | None = None, padding_mask: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> ModelOutput:
        """Logits for every position, the routing of every MoE layer and the balance loss.

        ``cache`` (from ``new_cache()``) holds the earlier positions; ``padding_mask`` covers them and the new ones
        (True = real token); ``position_ids`` default to ``len(cache) + arange(T)`` for every row. An empty batch
        (B = 0 or T = 0) returns empty logits. With MTP modules and no cache, the forward also runs them and returns
        λ · L_MTP as ``mtp_loss``; their targets come from ``tokens`` or, when given, from the next-token
        ``targets`` of the batch (``IGNORE_INDEX`` = skipped; see ``minimoe.mtp.mtp_targets``).

        Shapes: tokens (B, T) integer, position_ids (B, T), padding_mask (B, S) bool, targets (B, T) or None
        -> logits (B, T, V).
        """
        past = self._check_inputs(tokens, position_ids, cache, padding_mask)
        B, T = tokens.shape
        device = tokens.device
        if B == 0 or T == 0:
            logits = torch.zeros(B, T, self.cfg.vocab_size, dtype=self.head.weight.dtype, device=device)
            return ModelOutput(logits, [], torch.zeros((), device=device), mtp_loss=torch.zeros((), device=device))
        # once for all layers: cos_sin 2 × (B, T, d_r/2), mask (B, T, S) or None = plain causal
        cos_sin, mask = attention_inputs(self.rope, B, T, past, position_ids, padding_mask, device)
        x = self.embed(tokens)  # (B, T, d)
        routing: list[RoutingRecord] = []
        for i, layer in enumerate(self.layers):
            x, record = layer(x, cos_sin, mask, None if cache is None else cache[i])
            if record is not None:
                routing.append(record)
        logits = self.head(self.norm(x))  # (B, T, V)
        mtp_logits: list[torch.Tensor] = []
        h = x  # h^0: the main model's representation, before the final norm
        for k in range(1, len(self.mtp) + 1 if cache is None else 1):
            h, logits_k, record = self.mtp_step(k, h, tokens, cos_sin, mask)  # (B, T - k, d), (B, T - k, V)
            mtp_logits.append(logits_k)
            if record is not None:
                routing.append(record)
        balance_loss = routing_balance_loss(routing, self.cfg).to(device)
        loss_mtp = torch.zeros((), device=device)
        if mtp_logits:
            loss_mtp = mtp_loss(mtp_logits, tokens, self.cfg.mtp_loss_weight, targets).to(device)  # Eq. (25)
        return ModelOutput(logits, routing, balance_loss, mtp_logits, loss_mtp, x)

    def mtp_step(self, depth: int, h_prev: torch.Tensor, tokens: torch.Tensor,
                 cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, RoutingRecord | None]:
        """Run MTP module k = ``depth`` (DeepSeek-V3 Eqs. (21)–(23)) over the first n = min(T_h, T_tok − k)
        positions: position i combines h^{k−1}_i with Emb(tokens[:, i + k]). Returns h^k, its logits through the
        shared head, and the routing. ``cos_sin`` and ``mask`` are the main model's (no cache), cut to n.

        Shapes: h_prev (B, T_h, d), tokens (B, T_tok), cos_sin 2 × (B, ≥ n, d_r/2), mask (B, ≥ n, ≥ n) or None
        -> h (B, n, d), logits (B, n, V), RoutingRecord or None.
        """
        module = self.mtp[depth - 1]
        n = min(h_prev.shape[1], tokens.shape[1] - depth)
        cos, sin = cos_sin
        h, record = module(h_prev[:, :n], self.embed(tokens[:, depth:depth + n]), (cos[:, :n], sin[:, :n]),
                           None if mask is None else mask[:, :n, :n])  # (B, n, d)
        return h, self.head(module.norm(h)), record

    @torch.no_grad()
    def update_routing_bias(self, routing: list[RoutingRecord]) -> None:
        """The auxiliary-loss-free bias update (DeepSeek-V3 §2.1.2): b_i ← b_i + γ·sign(mean load − load_i) for
        every MoE layer in ``routing``, with γ = ``cfg.bias_update_speed``; a no-op without a bias or with γ = 0.
        """
        gamma = self.cfg.bias_update_speed
        if not gamma:
            return
        blocks = [*self.layers, *(module.block for module in self.mtp)]  # record.layer indexes these
        for record in routing:
            router = blocks[record.layer].ffn.router
            if router.bias is not None:
                load = expert_load(record.experts, self.cfg.n_routed_experts)  # (E,)
                router.bias.copy_(update_selection_bias(router.bias, load, gamma))

    def _check_inputs(self, tokens: torch.Tensor, position_ids: torch.Tensor | None,
                      cache: list[LayerCache] | None, padding_mask: torch.Tensor | None) -> int:
        """Validate everything once, with at most one host sync; returns the number of cached positions."""
        cfg = self.cfg
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype in (torch.bool, torch.uint8):
            raise ValueError(f"tokens must be a signed integer tensor of token ids (e.g. torch.long), got "
                             f"{tokens.dtype}" + (" (uint8 and bool are not token ids)"
                                                 if tokens.dtype in (torch.bool, torch.uint8) else ""))
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (B, T), got {tuple(tokens.shape)}; "
                             "for one sequence use tokens[None]")
        B, T = tokens.shape
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}: use model.new_cache()")
        past = 0 if cache is None else len(cache[0])
        if cache is not None and past and cache[0].batch_size != B:
            raise ValueError(f"cache holds batch size {cache[0].batch_size}, tokens have {B}")
        if past + T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length ({past} cached + {T} new) exceeds "
                             f"max_position_embeddings ({cfg.max_position_embeddings})")
        if padding_mask is not None and (padding_mask.shape != (B, past + T) or padding_mask.dtype != torch.bool):
            raise ValueError(f"padding_mask must be a bool tensor of shape (B, S) = {(B, past + T)} over cached and "
                             f"new keys, got {padding_mask.dtype} {tuple(padding_mask.shape)}")
        if position_ids is not None and (position_ids.shape != (B, T) or position_ids.is_floating_point()
                                         or position_ids.dtype == torch.bool):
            raise ValueError(f"position_ids must be an integer tensor of shape (B, T) = {(B, T)}, "
                             f"got {position_ids.dtype} {tuple(position_ids.shape)}")
        if tokens.numel() == 0:
            return past
        bad = ((tokens < 0) | (tokens >= cfg.vocab_size)).any()
        if position_ids is not None:
            bad_pos = ((position_ids < 0) | (position_ids >= cfg.max_position_embeddings)).any()
            bad, bad_pos = torch.stack((bad, bad_pos)).tolist()  # the one host sync of the forward
        else:
            bad, bad_pos = bool(bad), False
        if bad:
            low, high = torch.aminmax(tokens)
            raise ValueError(f"token ids must lie in [0, vocab_size={cfg.vocab_size}), got values in "
                             f"[{int(low)}, {int(high)}]")
        if bad_pos:
            low, high = torch.aminmax(position_ids)
            raise ValueError(f"position_ids must lie in [0, max_position_embeddings={cfg.max_position_embeddings}); "
                             f"got [{int(low)}, {int(high)}]")
        return past


def _check_attn_mode(cfg: ModelConfig, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"attn_mode ({mode!r}) must be one of {MODES}")
    if mode == "absorbed" and cfg.attention_type != "mla":
        raise ValueError(f"attn_mode 'absorbed' needs attention_type='mla', got {cfg.attention_type!r}")
