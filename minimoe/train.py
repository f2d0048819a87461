"""Language-model training for minimoe: AdamW, warm-up + cosine schedule, clipping, load balancing, checkpoints.

The recipe is DeepSeek-V3's (DeepSeek-V3 §4.2) at toy scale: AdamW with β = (0.9, 0.95) and weight decay 0.1,
gradient clipping at 1.0, a linear warm-up then a cosine decay. Load balancing follows DeepSeek-V2 §2.2.3 (an
auxiliary loss added to the LM loss, gradient through the router's scores; sequence-wise in both papers, batch-wise
as the variant of DeepSeek-V3 §4.5.3) and DeepSeek-V3 §2.1.2 (a selection bias nudged once per step from the batch's
expert load, no gradient). Every step records its metrics in a ``History``
so the notebooks can plot loss, learning rate and per-layer expert load.

``data_fn(step, batch_size, seq_len, generator) -> (inputs, targets)`` supplies batches of token ids (B, T); a
target of -100 is ignored by the loss. ``minimoe.tasks`` holds ready-made ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.moe.balance import (
    expert_balance_loss,
    expert_load,
    max_violation,
    sequence_balance_loss,
    update_selection_bias,
)
from minimoe.moe.experts import DeepSeekMoE

BALANCE_MODES = ("none", "aux", "aux_free", "both")
IGNORE_INDEX = -100
CHECKPOINT_FORMAT = "minimoe-checkpoint-v1"

DataFn = Callable[[int, int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    """Settings of one training run; invalid values raise ``ValueError`` naming the field."""

    steps: int = 200
    """Number of optimizer steps (one batch each)."""
    batch_size: int = 16
    """Sequences per batch (B)."""
    seq_len: int = 64
    """Tokens per sequence (T); at most the model's ``max_position_embeddings``."""
    lr: float = 3e-3
    """Peak learning rate, reached at the end of the warm-up."""
    warmup: int = 20
    """Steps of linear warm-up from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """The cosine decay ends at ``min_lr_ratio · lr`` on the last step (DeepSeek-V3: 2.2e-5 / 2.2e-4 = 0.1)."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices and embeddings only (not to norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (β1, β2), DeepSeek-V3 §4.2."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping (the norm is still recorded)."""
    seed: int = 0
    """Seeds the ``torch.Generator`` handed to ``data_fn``; initialise the model under a seed yourself."""
    log_every: int = 10
    """Refresh the progress bar's loss / MaxVio read-out every this many steps (the history records every step)."""
    balance: str | None = None
    """"none" | "aux" (auxiliary loss) | "aux_free" (selection bias) | "both"; None = as the model's config sets
    (``aux_loss_alpha > 0`` → aux, ``bias_update_speed > 0`` with ``noaux_tc`` routing → aux_free)."""
    aux_alpha: float | None = None
    """α of the balance loss; None = the model's ``aux_loss_alpha``."""
    seq_aux: bool | None = None
    """True = sequence-wise loss, as both papers define it (DeepSeek-V2 Eq. (23)–(25), DeepSeek-V3 Eq. (17)–(20));
    False = the same loss over the whole batch (the batch-wise variant of DeepSeek-V3 §4.5.3); None = the model's
    ``seq_aux``."""
    bias_gamma: float | None = None
    """γ of the auxiliary-loss-free bias update; None = the model's ``bias_update_speed``."""
    device: str = "cpu"
    """Where the model and the batches live ("cpu", "cuda", …)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    checkpoint_path: str | None = None
    """Where to save model, optimizer state and history (atomically) every ``checkpoint_every`` steps, at the end,
    and when the run is interrupted; None = keep everything in memory only."""
    checkpoint_every: int = 100
    """Steps between checkpoints when ``checkpoint_path`` is set."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup ({self.warmup!r}) must be an integer between 0 and steps ({self.steps})")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed ({self.seed!r}) must be a non-negative integer")
        if not self.lr > 0:
            raise ValueError(f"lr ({self.lr}) must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must lie in [0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay ({self.weight_decay}) must be non-negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas ({self.betas}) must be two numbers in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip ({self.grad_clip}) must be positive or None")
        if self.balance is not None and self.balance not in BALANCE_MODES:
            raise ValueError(f"balance ({self.balance!r}) must be one of {BALANCE_MODES} or None")
        for name in ("aux_alpha", "bias_gamma"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} ({value}) must be non-negative or None")


class Balancing(NamedTuple):
    """The balancing a run actually uses, once ``TrainConfig``'s None fields are filled from the model's config."""

    mode: str
    aux_alpha: float
    seq_aux: bool
    bias_gamma: float


def resolve_balancing(cfg: TrainConfig, model_cfg: ModelConfig) -> Balancing:
    """Fill ``cfg``'s unset balancing fields from ``model_cfg`` and check the combination makes sense."""
    alpha = model_cfg.aux_loss_alpha if cfg.aux_alpha is None else cfg.aux_alpha
    seq_aux = model_cfg.seq_aux if cfg.seq_aux is None else cfg.seq_aux
    gamma = model_cfg.bias_update_speed if cfg.bias_gamma is None else cfg.bias_gamma
    has_bias = model_cfg.is_moe and model_cfg.topk_method == "noaux_tc"
    mode = cfg.balance
    if mode is None:
        use_aux, use_bias = model_cfg.is_moe and alpha > 0, has_bias and gamma > 0
        mode = {(False, False): "none", (True, False): "aux", (False, True): "aux_free", (True, True): "both"}[
            (use_aux, use_bias)]
    if mode != "none" and not model_cfg.is_moe:
        raise ValueError(f"balance={mode!r} needs a MoE model (n_routed_experts > 0); this model is dense")
    if mode in ("aux", "both") and not alpha > 0:
        raise ValueError(f"balance={mode!r} needs aux_alpha > 0 (got {alpha}; set TrainConfig.aux_alpha)")
    if mode in ("aux_free", "both"):
        if not has_bias:
            raise ValueError(f"balance={mode!r} needs a selection bias: the model's topk_method must be 'noaux_tc' "
                             f"(got {model_cfg.topk_method!r})")
        if not gamma > 0:
            raise ValueError(f"balance={mode!r} needs bias_gamma > 0 (got {gamma}; set TrainConfig.bias_gamma)")
    return Balancing(mode, alpha, seq_aux, gamma)


@dataclass
class History:
    """Metrics of every step. ``expert_load[s][l]`` is the load (E shares, summing to 1) of MoE layer
    ``moe_layers[l]`` at step ``s``; ``max_vio[s][l]`` its MaxVio."""

    moe_layers: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lm_loss: list[float] = field(default_factory=list)
    balance_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    expert_load: list[list[list[float]]] = field(default_factory=list)
    max_vio: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.step)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(**d)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up to ``lr``, then cosine down to ``min_lr_ratio · lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)  # 0 after warm-up, 1 on the last step
    min_lr = cfg.min_lr_ratio * cfg.lr
    return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on tensors of two or more dims (matrices, embeddings) and none on norm weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def moe_layers(model: Transformer) -> list[tuple[int, DeepSeekMoE]]:
    """The (layer index, DeepSeekMoE) pairs of a model, in order."""
    return [(i, layer.ffn) for i, layer in enumerate(model.layers) if isinstance(layer.ffn, DeepSeekMoE)]


def balance_loss(routing: list[tuple[torch.Tensor, torch.Tensor]], n_experts: int,
                 balancing: Balancing, *, unbiased_topk: bool = False) -> torch.Tensor:
    """Σ over MoE layers of the balance loss of their routing on this batch (0 unless balancing uses a loss).

    Batch-wise, the scores are first normalised per token, s / Σ_j s: a softmax row (DeepSeek-V2 Eq. (25)) is
    unchanged, sigmoid affinities become comparable as in DeepSeek-V3 Eq. (19).

    ``unbiased_topk=True`` counts, in f_i, the top-K of the raw affinities s over all experts, as DeepSeek-V3
    Eq. (18) does, instead of the experts the router selected (with ``s + b`` and group limits); ``train`` sets it
    for ``noaux_tc`` models. False counts the selected experts, as DeepSeek-V2 Eq. (24) does.

    Shapes: routing: per layer (scores (B, T, E), indices (B, T, K)) -> scalar.
    """
    if balancing.mode not in ("aux", "both") or not routing:
        return torch.zeros(())
    total = []
    for scores, indices in routing:
        if unbiased_topk:
            indices = scores.topk(indices.shape[-1], dim=-1).indices  # (B, T, K): Eq. (18), Topk({s_j,t}, K_r)
        if balancing.seq_aux:
            total.append(sequence_balance_loss(scores, indices, n_experts, balancing.aux_alpha))
        else:
            s_norm = scores / scores.sum(dim=-1, keepdim=True)  # (B, T, E)
            total.append(expert_balance_loss(s_norm, indices, n_experts, balancing.aux_alpha))
    return torch.stack(total).sum()


def train(model: Transformer, data_fn: DataFn, cfg: TrainConfig,
          optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place for ``cfg.steps`` steps on batches from ``data_fn``; return the metrics history.

    Each step: forward → LM cross-entropy (+ balance loss from every MoE layer's routing) → backward → clip →
    AdamW step → auxiliary-loss-free bias update from this batch's expert load (DeepSeek-V3 §2.1.2). Pass your own
    ``optimizer`` to keep its state (e.g. for ``save_checkpoint``); by default ``make_optimizer`` builds one.

    Shapes: data_fn(step, B, T, generator) -> inputs (B, T) long, targets (B, T) long (-100 = ignored).
    """
    model_cfg = model.cfg
    balancing = resolve_balancing(cfg, model_cfg)
    if cfg.seq_len > model_cfg.max_position_embeddings:
        raise ValueError(f"seq_len ({cfg.seq_len}) must be <= the model's max_position_embeddings "
                         f"({model_cfg.max_position_embeddings})")
    model.to(cfg.device).train()
    optimizer = make_optimizer(model, cfg) if optimizer is None else optimizer
    moes = moe_layers(model)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = History(moe_layers=[i for i, _ in moes])
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress)
    try:
        for step in bar:
            _train_step(model, data_fn, cfg, optimizer, moes, balancing, generator, history, step, bar)
            if cfg.checkpoint_path and (step + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(cfg.checkpoint_path, model, optimizer, history)
    except KeyboardInterrupt:
        # No lost work: the model keeps what it learned (it is trained in place) and the history comes back.
        warnings.warn(f"training interrupted after {len(history)} of {cfg.steps} steps; returning the history so far"
                      + (f" (checkpoint saved to {cfg.checkpoint_path})" if cfg.checkpoint_path else ""),
                      stacklevel=2)
    finally:
        bar.close()
        if cfg.checkpoint_path and len(history):
            save_checkpoint(cfg.checkpoint_path, model, optimizer, history)
    return history


def _train_step(model: Transformer, data_fn: DataFn, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                moes: list[tuple[int, DeepSeekMoE]], balancing: Balancing, generator: torch.Generator,
                history: History, step: int, bar: tqdm) -> None:
    """One optimizer step; appends its metrics to ``history``."""
    model_cfg = model.cfg
    n_experts = model_cfg.n_routed_experts
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    inputs, targets = _batch(data_fn, step, cfg, generator, model_cfg.vocab_size)
    logits = model(inputs)  # (B, T, V)
    lm_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
    routing = [moe.last_routing for _, moe in moes]
    bal_loss = balance_loss(routing, n_experts, balancing,
                            unbiased_topk=model_cfg.topk_method == "noaux_tc").to(lm_loss.device)
    loss = lm_loss + bal_loss
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}: lower lr ({cfg.lr}) or check data")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
    optimizer.step()
    loads = [expert_load(indices, n_experts) for _, indices in routing]  # per layer (E,)
    if balancing.mode in ("aux_free", "both"):
        for (_, moe), load in zip(moes, loads):
            moe.gate.bias.copy_(update_selection_bias(moe.gate.bias, load, balancing.bias_gamma))
    history.step.append(step)
    history.loss.append(loss.item())
    history.lm_loss.append(lm_loss.item())
    history.balance_loss.append(bal_loss.item())
    history.lr.append(lr)
    history.grad_norm.append(grad_norm.item())
    history.expert_load.append([load.tolist() for load in loads])
    history.max_vio.append([max_violation(load).item() for load in loads])
    if step % cfg.log_every == 0 or step == cfg.steps - 1:
        shown = {"loss": f"{lm_loss.item():.3f}", "lr": f"{lr:.1e}"}
        if loads:
            shown["maxvio"] = f"{max(history.max_vio[-1]):.2f}"
        bar.set_postfix(shown)


def _batch(data_fn: DataFn, step: int, cfg: TrainConfig, generator: torch.Generator,
           vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = data_fn(step, cfg.batch_size, cfg.seq_len, generator)
    if not (isinstance(batch, tuple) and len(batch) == 2):
        raise ValueError("data_fn must return a tuple (inputs, targets)")
    expected = (cfg.batch_size, cfg.seq_len)
    for name, tensor in zip(("inputs", "targets"), batch):
        if not isinstance(tensor, torch.Tensor) or tensor.is_floating_point() or tuple(tensor.shape) != expected:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"data_fn must return integer {name} of shape (batch_size, seq_len) = {expected}, "
                             f"got {got}")
    inputs, targets = batch
    real = targets[targets != IGNORE_INDEX]
    if real.numel() and (real.min() < 0 or real.max() >= vocab_size):
        raise ValueError(f"targets must lie in [0, vocab_size={vocab_size}) or be {IGNORE_INDEX} (ignored)")
    return inputs.to(cfg.device), targets.to(cfg.device)


# ----------------------------------------------------------------------------------------------- checkpoints
class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns; unpacks as ``model, optimizer_state, history = load_checkpoint(path)``."""

    model: Transformer
    optimizer_state: dict[str, Any] | None
    history: History | None


def save_checkpoint(path: str | os.PathLike, model: Transformer, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None) -> Path:
    """Write the model's config and weights (and optionally optimizer state and history) to ``path``.

    The file is written to a temporary name in the same folder and renamed into place, so an interrupted save never
    leaves a truncated checkpoint behind. Returns the path written.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": model.cfg.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": None if optimizer is None else optimizer.state_dict(),
        "history": None if history is None else history.to_dict(),
    }
    return atomic_save(payload, path)


def atomic_save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the target folder, then rename: never a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model from the stored ``ModelConfig`` and weights; also return optimizer state and history.

    Load the optimizer state into an optimizer built for the returned model: ``make_optimizer(model, cfg)
    .load_state_dict(optimizer_state)``.
    """
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        raise ValueError(f"{path} is not a minimoe checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    model = Transformer(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["model_state"])
    history = None if payload["history"] is None else History.from_dict(payload["history"])
    return Checkpoint(model.to(map_location), payload["optimizer_state"], history)
