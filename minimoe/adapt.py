"""Adapting a trained model to a new language without forgetting what it knew (chapter 11).

Four tools, each usable alone; ``minimoe.localise`` compares them.

* **Vocabulary extension** (``extend_tokenizer``, ``extend_vocabulary``): new characters get new ids after the old
  ones, so every old id keeps its meaning, and the model gets new rows in its embedding and output head. A new row
  starts as the mean of the old rows (Hewitt 2021: the mean keeps the new words' probabilities near the average) or
  as the mean of the rows of tokens it maps to (三 → "3", 加 → "+"). Old tokens' logits do not change.
* **LoRA** (Hu et al. 2021, §4.1, Eq. (3)): a frozen weight W₀ plus a trainable low-rank update,
  h = W₀x + (α/r)·B A x with A ∈ R^{r×k}, B ∈ R^{d×r}, B = 0 at the start. ``add_lora`` wraps the attention and
  expert projections; ``merge_lora`` folds (α/r)·BA into W₀ (no inference cost, Hu et al. 2021, §4.1),
  ``unmerge_lora`` takes it out again. Equal to ``peft``'s LoRA on the transformers export of the same weights (tests/test_adapt.py).
* **Replay** (``replay_rows``): a fixed fraction of every batch is drawn from the original training data, so the
  gradient keeps a term for what the model should still do (rehearsal; Robins 1995).
* **New experts** (``add_experts``): the MoE-native option. New routed experts, with new router rows, form new
  expert groups beside the old ones (so group-limited routing, DeepSeek-V3 §2.1.2, keeps the old groups intact); the
  old experts, router rows and everything else stay frozen (``freeze_rows``) and the new domain learns in the new
  experts only (in the spirit of Chen et al. 2023, Lifelong-MoE: expand the experts, freeze the old ones).

Every adaptation loop trains with ``minimoe.optim.training_step``; only which parameters are trainable differs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from minimoe.model import Transformer
from minimoe.tasks.tokenizer import CharTokenizer

__all__ = ["LORA_TARGETS", "LoRALinear", "add_experts", "add_lora", "expert_shares", "extend_tokenizer",
           "extend_vocabulary", "freeze_rows", "lora_layers", "merge_lora", "n_trainable", "rebuild",
           "replay_rows", "unload_lora", "unmerge_lora"]

LORA_TARGETS = (r"layers\.\d+\.attn\.\w+", r"layers\.\d+\.ffn\.(experts\.\d+|shared_experts)\.w[123]")
"""Regular expressions (full match on module names) of the projections ``add_lora`` adapts by default: every
linear map of the attention (MLA: wq_a, wq_b, wkv_a, wkv_b, wo) and every routed and shared expert's w1, w2, w3."""


def extend_tokenizer(tokenizer: CharTokenizer, chars: Iterable[str]) -> CharTokenizer:
    """A tokenizer with the characters of `chars` it lacks appended (in order of first appearance): every old
    character keeps its id, the new ones get ids vocab_size, vocab_size + 1, …"""
    new = "".join(dict.fromkeys(c for c in "".join(chars) if c not in tokenizer.chars))
    return CharTokenizer(tokenizer.chars + new)


def rebuild(model: Transformer, **config_changes) -> Transformer:
    """A new Transformer on ``model.cfg.replace(**config_changes)`` holding a copy of ``model``'s weights."""
    new = Transformer(model.cfg.replace(**config_changes))
    new.load_state_dict(model.state_dict(), strict=True)
    return new.train(model.training)


def extend_vocabulary(model: Transformer, n_new: int, *, init: str = "mean",
                      sources: Sequence[Sequence[int]] | None = None, **config_changes) -> Transformer:
    """A copy of ``model`` with `n_new` more tokens: new embedding rows and output-head rows after the old ones.

    ``init="mean"``: every new row is the mean of the old rows. ``init="mapped"``: new token j starts as the mean of
    the rows of the old ids ``sources[j]`` (an empty list = the mean of all). The old rows are copied, so for any
    input of old tokens the first V logits are exactly the old model's.

    Shapes: embed (V, d) -> (V + n_new, d); head (V, d) -> (V + n_new, d).
    """
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new ({n_new!r}) must be a positive integer")
    vocab = model.cfg.vocab_size
    if init == "mean":
        sources = [[]] * n_new
    elif init == "mapped":
        if sources is None or len(sources) != n_new:
            raise ValueError(f"init='mapped' needs one list of source ids per new token ({n_new}); got "
                             f"{None if sources is None else len(sources)}")
        bad = [i for ids in sources for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]
        if bad:
            raise ValueError(f"source ids must be old token ids in [0, {vocab}); got {bad[:5]}")
    else:
        raise ValueError(f"init ({init!r}) must be 'mean' or 'mapped'")
    state = model.state_dict()
    for key in ("embed.weight",) + (() if model.cfg.tie_word_embeddings else ("head.weight",)):
        old = state[key]  # (V, d)
        rows = [old[list(ids)].mean(0) if ids else old.mean(0) for ids in sources]
        state[key] = torch.cat([old, torch.stack(rows)])  # (V + n_new, d)
    new = Transformer(model.cfg.replace(vocab_size=vocab + n_new, **config_changes))
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


def freeze_rows(parameter: nn.Parameter, n_frozen: int) -> torch.utils.hooks.RemovableHandle:
    """Keep the first `n_frozen` rows of `parameter` fixed: their gradient is set to 0 (a hook), so AdamW (with no
    weight decay on them) never moves them. Used for the old rows of embeddings, head and router. Returns the
    hook's handle (``handle.remove()`` lets every row learn again).

    Shapes: parameter (R, ·); rows 0 … n_frozen − 1 frozen.
    """
    if not 0 <= n_frozen <= parameter.shape[0]:
        raise ValueError(f"n_frozen ({n_frozen}) must lie in [0, {parameter.shape[0]}]")
    parameter.requires_grad_(True)

    def zero_old_rows(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_frozen] = 0
        return grad

    return parameter.register_hook(zero_old_rows)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` W₀ with a LoRA update (Hu et al. 2021, Eq. (3)): y = W₀x + b + (α/r)·B(Ax).

    A starts Gaussian with std 1/r (peft's ``init_lora_weights="gaussian"``; Hu et al. 2021, §4.1 say "random
    Gaussian"), B at zero, so the wrapped layer starts equal to W₀. ``weight`` is the effective W₀ + (α/r)·BA, so
    code that reads the matrix itself (MLA's absorbed mode reads W^UK and W^UV from ``wkv_b.weight``) sees the
    adapted one.
    ``merge()`` adds (α/r)·BA into W₀ and stops the extra path; ``unmerge()`` subtracts it again.

    Shapes: x (..., k) -> (..., d); A (r, k), B (d, r).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r ({r!r}) must be a positive integer")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha ({alpha!r}) must be a positive number")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features, dtype=base.weight.dtype) / r)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·BA. Shapes: -> (d, k)."""
        return self.scaling * self.lora_B @ self.lora_A

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight if self.merged else self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T  # Eq. (3): W₀x + ΔWx

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def add_lora(model: nn.Module, r: int = 4, alpha: float = 8.0, targets: Sequence[str] = LORA_TARGETS) -> list[str]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name fully matches one of `targets` in a ``LoRALinear``;
    returns the wrapped names. Only the LoRA matrices are then trainable (unfreeze others yourself)."""
    patterns = [re.compile(t) for t in targets]
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and any(p.fullmatch(name) for p in patterns)]
    if not names:
        raise ValueError(f"no nn.Linear of the model matches targets {list(targets)}")
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The ``LoRALinear`` modules of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its frozen weight (Hu et al. 2021, §4.1: no extra inference latency)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every merged LoRA update out of its weight again (to train on, or to swap adapters)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge, then replace every ``LoRALinear`` by its plain ``nn.Linear`` (peft's ``merge_and_unload``): the model
    has its original structure again (``state_dict``, ``to_hf`` and checkpoints work as before)."""
    merge_lora(model)
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base.requires_grad_(True))
    return model


def replay_rows(n_local: int, n_original: int, batch_size: int, fraction: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of one replay batch: round(fraction · batch_size) rows of the original data, the rest local,
    each drawn uniformly with replacement.

    Shapes: -> local rows (batch_size − n_replay,), original rows (n_replay,), long.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction ({fraction!r}) must lie in [0, 1]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size ({batch_size!r}) must be a positive integer")
    n_replay = round(fraction * batch_size)
    for name, n, needed in (("n_local", n_local, batch_size - n_replay), ("n_original", n_original, n_replay)):
        if needed and n < 1:
            raise ValueError(f"{name} ({n}) must be positive to draw {needed} rows")
    local = torch.randint(0, max(n_local, 1), (batch_size - n_replay,), generator=generator)
    original = torch.randint(0, max(n_original, 1), (n_replay,), generator=generator)
    return local, original


def add_experts(model: Transformer, n_new: int, **config_changes) -> Transformer:
    """A copy of ``model`` with `n_new` more routed experts in every MoE layer, as new expert groups.

    With group-limited routing the new experts form n_new / experts_per_group new groups, so every old group keeps
    its members and topk_group is unchanged. A new expert and its router row start as initialised for a new model
    (N(0, initializer_range²)); its selection bias starts at 0. Freeze the rest with ``freeze_rows``.

    Shapes: router weight (E, d) -> (E + n_new, d); bias (E,) -> (E + n_new,).
    """
    cfg = model.cfg
    if not cfg.is_moe:
        raise ValueError("add_experts needs an MoE model (n_routed_experts > 0)")
    if isinstance(n_new, bool) or not isinstance(n_new, int) or n_new < 1:
        raise ValueError(f"n_new ({n_new!r}) must be a positive integer")
    per_group = cfg.n_routed_experts // cfg.n_group
    if n_new % per_group:
        raise ValueError(f"n_new ({n_new}) must be a multiple of the experts per group ({per_group}) so the old "
                         "groups keep their members")
    n_experts = cfg.n_routed_experts + n_new
    new = Transformer(cfg.replace(n_routed_experts=n_experts, n_group=n_experts // per_group, **config_changes))
    fresh = new.state_dict()
    state = model.state_dict()
    for key, tensor in fresh.items():
        if key.endswith(("router.weight", "router.bias")):
            state[key] = torch.cat([state[key], tensor[cfg.n_routed_experts:]])  # old rows, then the new ones
        elif key not in state:
            state[key] = tensor  # a new expert's weights
    new.load_state_dict(state, strict=True)
    return new.train(model.training)


@torch.no_grad()
def expert_shares(model: Transformer, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per MoE layer, the share of the tokens where `mask` is True routed to each expert (the K choices counted
    equally): where the router sends a kind of token.

    Shapes: inputs (B, T), mask (B, T) bool -> (n_moe_layers, E), each row summing to 1.
    """
    routing = model.eval()(inputs).routing
    shares = []
    for record in routing:
        chosen = record.experts[mask]  # (N, K)
        counts = torch.bincount(chosen.flatten(), minlength=record.scores.shape[-1]).float()  # (E,)
        shares.append(counts / counts.sum().clamp(min=1))
    return torch.stack(shares)


def n_trainable(model: nn.Module, row_masks: dict[str, int] | None = None) -> int:
    """Trainable parameters of ``model``; ``row_masks`` maps a parameter name to its frozen-row count
    (``freeze_rows``), whose frozen rows are not counted."""
    row_masks = row_masks or {}
    total = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            frozen = row_masks.get(name, 0)
            total += p.numel() - frozen * (p[0].numel() if p.dim() else 1)
    return total
