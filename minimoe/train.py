"""Language-model training for minimoe: the loop. Each step is ``minimoe.optim.training_step`` on the next-token
cross-entropy; checkpoints come from ``minimoe.checkpoint``, the metrics record from ``minimoe.history``.

The recipe is DeepSeek-V3's (DeepSeek-V3 §4.2) at toy scale: AdamW with β = (0.9, 0.95) and weight decay 0.1,
gradient clipping at 1.0, a linear warm-up then a cosine decay. Load balancing is the model's business, set in its
``ModelConfig`` (``aux_loss_alpha``, ``seq_aux``, ``bias_update_speed``): the training step adds the forward's
balance loss (DeepSeek-V2 §2.2.3; DeepSeek-V3 Eq. (17)–(20)) and MTP loss to the LM loss and then updates the
routing bias with the step's routing (the auxiliary-loss-free bias, DeepSeek-V3 §2.1.2; a no-op without a bias).
To train with other balancing, train a model built from ``cfg.replace(...)``. Every step records its metrics in a
``History`` so the notebooks can plot loss, learning rate and per-layer expert load.

``data_fn(step, batch_size, seq_len, generator) -> (inputs, targets)`` supplies batches of token ids (B, T); a
target of ``IGNORE_INDEX`` (-100) is ignored by the loss. ``minimoe.tasks`` holds ready-made ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from minimoe.checkpoint import Checkpoint, CheckpointError, checkpoint_dir, load_checkpoint, save_checkpoint
from minimoe.history import History
from minimoe.moe import DeepSeekMoE
from minimoe.optim import STEP_METRICS, lr_at, make_optimizer, training_step
from minimoe.tasks.sequences import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "Checkpoint", "CheckpointError", "DataFn", "History", "TrainConfig", "checkpoint_dir",
           "load_checkpoint", "lr_at", "make_optimizer", "moe_layers", "optimizer_for", "save_checkpoint", "train"]

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
    """AdamW weight decay, applied to weight matrices only (not to norms, biases or embeddings: ``minimoe.optim``)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (β1, β2), DeepSeek-V3 §4.2."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping (the norm is still recorded)."""
    seed: int = 0
    """Seeds the ``torch.Generator`` handed to ``data_fn``; initialise the model under a seed yourself."""
    log_every: int = 10
    """Refresh the progress bar's loss / MaxVio read-out every this many steps (the history records every step)."""
    device: str = "cpu"
    """Where the model and the batches live ("cpu", "cuda", …)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    checkpoint_path: str | None = None
    """Where to save model, optimizer state and history (atomically) every ``checkpoint_every`` steps, at the end,
    and when the run is interrupted; None = keep everything in memory only. Put it under ``checkpoint_dir()``."""
    checkpoint_every: int = 100
    """Steps between checkpoints when ``checkpoint_path`` is set."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if not (_is_int(value) and value > 0):
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        if not (_is_int(self.warmup) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup ({self.warmup!r}) must be an integer between 0 and steps ({self.steps})")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"seed ({self.seed!r}) must be a non-negative integer")
        for name in ("lr", "min_lr_ratio", "weight_decay") + (() if self.grad_clip is None else ("grad_clip",)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"{name} ({value!r}) must be a finite number")
        if not self.lr > 0:
            raise ValueError(f"lr ({self.lr}) must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must lie in [0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay ({self.weight_decay}) must be non-negative")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas ({self.betas}) must be two numbers in [0, 1)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip ({self.grad_clip}) must be positive or None")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optimizer_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """``make_optimizer`` with ``cfg``'s learning rate, betas and weight decay."""
    return make_optimizer(model, cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def moe_layers(model: nn.Module) -> list[tuple[int, DeepSeekMoE]]:
    """The (layer index, DeepSeekMoE) pairs of a model, in order (the layers whose ``RoutingRecord``s a forward
    returns)."""
    return [(i, layer.ffn) for i, layer in enumerate(model.layers) if isinstance(layer.ffn, DeepSeekMoE)]


def train(model: nn.Module, data_fn: DataFn, cfg: TrainConfig,
          optimizer: torch.optim.Optimizer | None = None) -> History:
    """Train ``model`` in place for ``cfg.steps`` steps on batches from ``data_fn``; return the metrics history.

    Each step: ``out = model(inputs)`` → LM cross-entropy ``lm_loss`` → ``minimoe.optim.training_step`` (+ the
    balance and MTP losses, backward, clip, AdamW on the warm-up + cosine schedule, routing-bias update). A NaN or
    ±inf loss or gradient raises ``FloatingPointError`` naming the step. Pass your own ``optimizer`` to keep its
    state (e.g. for ``save_checkpoint``); by default ``optimizer_for(model, cfg)`` builds one.

    Shapes: data_fn(step, B, T, generator) -> inputs (B, T) long, targets (B, T) long (IGNORE_INDEX = ignored).
    """
    model_cfg = model.cfg
    if cfg.seq_len > model_cfg.max_position_embeddings:
        raise ValueError(f"seq_len ({cfg.seq_len}) must be <= the model's max_position_embeddings "
                         f"({model_cfg.max_position_embeddings})")
    model.to(cfg.device).train()
    optimizer = optimizer_for(model, cfg) if optimizer is None else optimizer
    generator = torch.Generator().manual_seed(cfg.seed)
    history = History(moe_layers=[], step=[], lm_loss=[], **{name: [] for name in STEP_METRICS})
    bar = tqdm(range(cfg.steps), desc="train", disable=not cfg.progress)
    try:
        for step in bar:
            _train_step(model, data_fn, cfg, optimizer, generator, history, step, bar)
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


def _train_step(model: nn.Module, data_fn: DataFn, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, history: History, step: int, bar: tqdm) -> None:
    """One optimizer step; appends its metrics to ``history``."""
    inputs, targets = _batch(data_fn, step, cfg, generator, model.cfg.vocab_size)
    out = model(inputs)
    lm_loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
    record = training_step(model, optimizer, lm_loss, out, step=step, cfg=cfg,
                           hint=f"lower lr ({cfg.lr}) or check the data")
    if not history.moe_layers:
        history.moe_layers = [r.layer for r in out.routing]  # the layers expert_load and max_vio follow
    history.record(step=step, lm_loss=lm_loss.item(), **record)
    if step % cfg.log_every == 0 or step == cfg.steps - 1:
        shown = {"loss": f"{lm_loss.item():.3f}", "lr": f"{record['lr']:.1e}"}
        if record["max_vio"]:
            shown["maxvio"] = f"{max(record['max_vio']):.2f}"
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
