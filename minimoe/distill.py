"""Distillation: teaching a small model with a large one's outputs.

Two ways to pass what a teacher knows to a smaller student:

* **Sequence-level distillation, R1's recipe** (DeepSeek-R1 §2.4): sample many answers from the teacher, keep only
  the correct, well-formatted ones (rejection sampling) and fine-tune the student on them with the ordinary
  next-token cross-entropy. SFT only, no RL. The student sees one token per position: the one the teacher sampled.
* **Logit distillation** (Hinton et al. 2015, §2): at every position of a sequence, match the student's whole
  next-token distribution to the teacher's, softened by a temperature τ. ``kd_loss`` below.

The comparison of both with RL on the student itself is chapter 8.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from minimoe.config import ModelConfig
from minimoe.history import History
from minimoe.optim import STEP_METRICS, make_optimizer, training_step
from minimoe.rl.rewards import accuracy_reward, format_reward
from minimoe.rl.rollout import sample_groups
from minimoe.tasks.sequences import IGNORE_INDEX
from minimoe.tasks.template import format_prompt
from minimoe.tasks.tokenizer import CharTokenizer

__all__ = ["DIRECTIONS", "KDConfig", "Traces", "cpu_seconds", "distill_logits", "kd_loss", "rejection_sample",
           "student_config"]

DIRECTIONS = ("forward", "reverse")
"""``forward`` = KL(teacher ‖ student) (mass-covering); ``reverse`` = KL(student ‖ teacher) (mode-seeking)."""


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
            temperature: float = 1.0, direction: str = "forward") -> torch.Tensor:
    """Knowledge-distillation loss: τ² · mean over masked tokens of KL between softened distributions.

    With p_τ = softmax(z^teacher / τ) and q_τ = softmax(z^student / τ) over the vocabulary at one position,

        forward:  KL(p_τ ‖ q_τ) = Σ_v p_τ(v) (log p_τ(v) − log q_τ(v))
        reverse:  KL(q_τ ‖ p_τ) = Σ_v q_τ(v) (log q_τ(v) − log p_τ(v))

    summed over the vocabulary, averaged over the positions where ``mask`` is True, and multiplied by τ², which
    keeps the gradients' size roughly independent of τ (Hinton et al. 2015, §2: the soft-target gradients scale as
    1/τ²). The teacher's logits are detached: only the student learns.

    Shapes:
        student_logits: (B, T, V) floating point.
        teacher_logits: (B, T, V), the same shape; any floating dtype (cast to the student's).
        mask: (B, T) bool, True where a token counts (e.g. the answer, not the prompt or the padding).
        returns: () scalar, in the student's dtype; 0 (with a gradient) if the mask selects nothing.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction ({direction!r}) must be one of {DIRECTIONS}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature ({temperature!r}) must be a positive number")
    if not student_logits.is_floating_point():
        raise TypeError(f"student_logits must be floating point, got {student_logits.dtype}")
    if not teacher_logits.is_floating_point():
        raise TypeError(f"teacher_logits must be floating point, got {teacher_logits.dtype}")
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits shape "
                         f"{tuple(student_logits.shape)} (B, T, V)")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}")

    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, T, V) student
    log_p = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)  # (B, T, V)
    if direction == "forward":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T) KL(p ‖ q)
    else:
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, T) KL(q ‖ p)
    n_tokens = mask.sum().clamp(min=1)
    return (kl * mask).sum() / n_tokens * temperature**2


@dataclass
class Traces:
    """Teacher completions kept by rejection sampling, as next-token training data.

    Shapes:
        inputs (N, L) long: bos + prompt + completion (eos included), right-padded with pad, the last token dropped;
        targets (N, L) long: the next token on completion positions, IGNORE_INDEX on the prompt and the padding;
        completions: the N kept completions as text; n_sampled: how many were drawn before filtering.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    completions: list[str]
    n_sampled: int

    @property
    def mask(self) -> torch.Tensor:
        """(N, L) bool: the positions that predict a completion token (where ``kd_loss`` and SFT learn)."""
        return self.targets != IGNORE_INDEX

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs[rows], targets[rows])``: a ``data_fn`` batch for ``minimoe.train.train``."""
        return self.inputs[rows], self.targets[rows]


@torch.no_grad()
def rejection_sample(teacher: nn.Module, tokenizer: CharTokenizer, task: Any, n_prompts: int, samples_per_prompt: int,
                     *, template: str, max_new_tokens: int, temperature: float = 1.0, seed: int = 0) -> Traces:
    """R1's distillation data (DeepSeek-R1 §2.3.3, §2.4): sample ``samples_per_prompt`` completions of each of
    ``n_prompts`` training problems from the teacher, keep those that are correct *and* well formatted.

    DeepSeek-R1 §2.3.3 samples the checkpoint of its reasoning-oriented RL stage, keeps only correct responses
    (judged by rules, or by DeepSeek-V3 for what rules cannot check) and drops those with mixed languages, long
    paragraphs or code blocks: about 600k reasoning samples, to which about 200k non-reasoning samples from
    DeepSeek-V3's pipeline are added. Here the accuracy and format rewards of chapter 7 are the judges. Only the "train" split is drawn, so the held-out problems stay unseen.
    """
    problems = task.sample(n_prompts, "train", seed=seed)
    prompts = [tokenizer.encode(format_prompt(p.question, template), add_bos=True) for p in problems]
    rollout = sample_groups(teacher.eval(), tokenizer, prompts, samples_per_prompt, max_new_tokens,
                            temperature=temperature, seed=seed)
    repeated = [p for p in problems for _ in range(samples_per_prompt)]
    keep = (accuracy_reward(rollout.completions, repeated) == 1) & (format_reward(rollout.completions) == 1)  # (B,)
    rows, starts = [], []
    for i in keep.nonzero().flatten().tolist():
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i]].tolist()
        completion = rollout.completion_ids[i][rollout.completion_mask[i].bool()].tolist()
        rows.append(prompt + completion)
        starts.append(len(prompt))
    if not rows:
        raise ValueError(f"no teacher sample of {len(repeated)} was correct and well formatted: nothing to distil")
    width = max(len(r) for r in rows)
    sequences = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)  # (N, L + 1)
    targets = torch.full((len(rows), width - 1), IGNORE_INDEX, dtype=torch.long)  # (N, L)
    for i, (row, n_prompt) in enumerate(zip(rows, starts)):
        sequences[i, :len(row)] = torch.tensor(row)
        targets[i, n_prompt - 1:len(row) - 1] = sequences[i, n_prompt:len(row)]
    kept = [rollout.completions[i] for i in keep.nonzero().flatten().tolist()]
    return Traces(sequences[:, :-1], targets, kept, len(repeated))


@dataclass
class KDConfig:
    """Settings of one logit-distillation run (``distill_logits``)."""

    steps: int = 200
    """Optimizer steps, one batch of traces each."""
    batch_size: int = 32
    """Sequences per batch."""
    lr: float = 5e-3
    """Peak learning rate (AdamW), after a linear warm-up, then a cosine decay to ``min_lr_ratio · lr``."""
    warmup: int = 20
    """Warm-up steps."""
    min_lr_ratio: float = 0.1
    """Where the cosine decay ends on the last step, as a fraction of ``lr``."""
    temperature: float = 1.0
    """τ of ``kd_loss``."""
    direction: str = "forward"
    """"forward" = KL(teacher ‖ student), "reverse" = KL(student ‖ teacher)."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip."""
    seed: int = 0
    """Seeds the batch sampler."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name} ({getattr(self, name)!r}) must be a positive integer")
        if not (isinstance(self.warmup, int) and 0 <= self.warmup <= self.steps):
            raise ValueError(f"warmup ({self.warmup!r}) must be an integer between 0 and steps ({self.steps})")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction ({self.direction!r}) must be one of {DIRECTIONS}")
        if not self.temperature > 0:
            raise ValueError(f"temperature ({self.temperature!r}) must be positive")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio!r}) must lie in [0, 1]")


def distill_logits(student: nn.Module, teacher: nn.Module | torch.Tensor, traces: Traces, cfg: KDConfig) -> History:
    """Train ``student`` in place to match ``teacher``'s next-token distributions on the traces' completion tokens.

    The teacher's logits are computed once, up front (offline distillation: the teacher runs once per trace,
    not once per step), or passed in precomputed as ``teacher``; each step is ``minimoe.optim.training_step`` on
    ``kd_loss`` (+ the student's balance and MTP losses, and its auxiliary-loss-free bias update, as in
    ``minimoe.train.train``). Returns a History of step, kd_loss and the training step's record (``STEP_METRICS``).

    Shapes: traces.inputs (N, L); teacher logits (N, L, V), V shared by teacher and student (one tokenizer).
    """
    if isinstance(teacher, torch.Tensor):
        teacher_logits = teacher.detach()  # (N, L, V)
    else:
        with torch.no_grad():
            teacher_logits = teacher.eval()(traces.inputs).logits  # (N, L, V)
    if teacher_logits.shape[:2] != traces.inputs.shape or teacher_logits.shape[-1] != student.cfg.vocab_size:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} must be (N, L, V) with (N, L) = "
                         f"{tuple(traces.inputs.shape)} and V = the student's vocab_size ({student.cfg.vocab_size}): "
                         "logit distillation needs one tokenizer")
    mask = traces.mask  # (N, L)
    student.train()
    optimizer = make_optimizer(student, cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    history = History(step=[], kd_loss=[], **{name: [] for name in STEP_METRICS})
    bar = tqdm(range(cfg.steps), desc="kd", disable=not cfg.progress)
    for step in bar:
        rows = torch.randint(0, len(traces.inputs), (cfg.batch_size,), generator=generator)
        out = student(traces.inputs[rows])
        loss = kd_loss(out.logits, teacher_logits[rows], mask[rows], temperature=cfg.temperature,
                       direction=cfg.direction)
        history.record(step=step, kd_loss=loss.item(),
                       **training_step(student, optimizer, loss, out, step=step, cfg=cfg, hint=f"lower lr ({cfg.lr})"))
        if step % 10 == 0:
            bar.set_postfix(kd=f"{history.loss[-1]:.3f}")
    return history


def cpu_seconds(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), CPU seconds it took)``: this process's CPU time (``time.process_time``), which on a shared machine
    does not count other people's work the way the wall clock does."""
    start = time.process_time()
    result = fn()
    return result, time.process_time() - start


def student_config(vocab_size: int, max_position_embeddings: int = 128) -> ModelConfig:
    """Chapter 8's student: the teacher's architecture (``tiny-v3``: MLA, a dense first layer, then DeepSeekMoE
    with a shared expert) at half the width, with half the heads and half the routed experts; about 4× fewer
    parameters."""
    return ModelConfig.from_preset(
        "tiny-v3", vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, hidden_size=32,
        intermediate_size=96, num_attention_heads=2, q_lora_rank=24, kv_lora_rank=16, n_routed_experts=4,
        n_group=2, topk_group=1, moe_intermediate_size=16)
