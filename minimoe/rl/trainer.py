"""GRPOTrainer: sample groups, score them with rule-based rewards, and optimise the GRPO loss.

One step (DeepSeekMath §4.1, Algorithm 1; DeepSeek-R1 §2.2): draw `prompts_per_step` training problems, sample G
completions each (`rollout.sample_groups`), reward them (`reward_fn`), turn rewards into group-relative advantages
(`grpo.group_advantages`), then take `num_iterations` AdamW steps on `grpo.grpo_loss`. The first pass scores the
completions under π_old = the policy that sampled them, so ρ = 1; later passes see ρ move away from 1 and the clip
bite. The KL term compares with a frozen reference policy, reset to the current policy every `ref_reset_every`
steps (as in iterative GRPO, DeepSeekMath §4.1.4, which also retrains its reward model with a replay of 10% of
historical data; rule-based rewards have no model to retrain). R1 resets every 400 steps (Guo et al. 2025, Nature,
Methods). DAPO's dynamic sampling drops groups whose rewards are all equal (their advantages are 0) and samples more
prompts to refill the batch.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from tqdm.auto import tqdm

from minimoe.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minimoe.history import History
from minimoe.moe import DeepSeekMoE
from minimoe.optim import STEP_METRICS, make_optimizer, training_step
from minimoe.rl.grpo import LOSS_TYPES, SCALES, group_advantages, grpo_loss
from minimoe.rl.rewards import CombinedReward, RewardFn, accuracy_reward, checked_rewards, format_reward
from minimoe.rl.rollout import Rollout, concat_rollouts, sample_groups, score_completions
from minimoe.tasks.template import format_prompt
from minimoe.tasks.tokenizer import CharTokenizer

NONFINITE_REWARDS = ("raise", "skip")
GRPO_METRICS = ("step", "reward", "accuracy", "format_rate", "response_length", "kl", "clip_fraction", "entropy",
                "grpo_loss", *STEP_METRICS, "groups_kept", "seconds", "eval_step", "eval_accuracy",
                "zero_std_groups", "clip_low", "clip_high", "truncated_rate", "length_correct", "length_wrong")
"""The columns of ``GRPOTrainer.history``; a ``CombinedReward`` adds one column per term (``reward_term_column``).

What a practitioner watches, beside the reward: ``zero_std_groups`` the fraction of sampled groups whose G rewards are
all equal (zero advantage, no gradient; DAPO §3.2); ``clip_low`` / ``clip_high`` the token fractions clipped below
and above (DAPO §3.1: clip-higher); ``entropy`` the policy's mean token entropy (DAPO §3.1: entropy collapse);
``truncated_rate`` the fraction of samples cut at ``max_new_tokens``; ``length_correct`` / ``length_wrong`` the
mean length of right and wrong samples (Dr. GRPO §3.1: per-sequence normalisation lets wrong answers grow long);
``kl`` to the reference; ``expert_load`` / ``max_vio`` the MoE routing."""


@dataclass
class GRPOConfig:
    """Settings of one GRPO run; invalid values raise ``ValueError`` naming the field and the rule."""

    group_size: int = 8
    """G, completions sampled per prompt (DeepSeekMath §4.2: 64; R1: 16). At least 2: a group of one has zero
    advantage."""
    prompts_per_step: int = 8
    """Prompts per step; a step trains on prompts_per_step · G completions (R1: 32 prompts)."""
    steps: int = 100
    """Number of rollout steps (each followed by num_iterations optimiser steps)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (DeepSeekMath: 1e-6 and R1: 3e-6 for billions of parameters; a tiny model needs far
    more)."""
    beta: float = 0.0
    """β, weight of the k3 KL to the reference policy in the loss (DeepSeekMath: 0.04, R1: 0.001, DAPO and TRL: 0)."""
    epsilon_low: float = 0.2
    """ε of the clip: ρ is clipped below at 1 − ε_low (PPO's paper and TRL: 0.2; DeepSeekMath does not state its ε)."""
    epsilon_high: float | None = None
    """Upper clip 1 + ε_high; None = epsilon_low (symmetric). DAPO's clip-higher uses 0.28."""
    loss_type: str = "grpo"
    """Aggregation over tokens: "grpo" | "bnpo" | "dr_grpo" | "dapo" (see ``minimoe.rl.grpo.grpo_loss``)."""
    scale_rewards: str = "group"
    """Advantage scaling: "group" std (GRPO), "batch" std, or "none" (Dr. GRPO)."""
    num_iterations: int = 1
    """Optimisation passes per rollout (μ in DeepSeekMath Algorithm 1). With 1 the ratio is exactly 1 and the clip
    never acts; with more the policy moves away from π_old and clipping matters."""
    max_new_tokens: int = 64
    """Longest completion sampled; longer ones are cut (and usually unrewarded). Also L_max of "dr_grpo"."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (R1: 1.0); log-probs are computed at the same temperature."""
    ref_reset_every: int | None = None
    """Copy the policy into the reference model every this many steps; None = keep the initial policy."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups with all-equal rewards and draw more prompts to refill the batch."""
    max_sampling_rounds: int = 3
    """With dynamic_sampling, at most this many rollouts per step; the step trains on what was kept."""
    template: str = "compact"
    """Prompt template: "r1", "compact" or a format string with "{question}" (``minimoe.tasks.format_prompt``)."""
    warmup: int = 0
    """Steps of linear learning-rate warm-up (``minimoe.optim.warmup_cosine``: step s < warmup gets
    (s + 1) / warmup of ``lr``). Adam's first updates move every weight by about lr whatever the gradient's size,
    which on one noisy batch of rewards can undo the SFT policy."""
    min_lr_ratio: float = 1.0
    """After the warm-up the learning rate follows a cosine to ``min_lr_ratio · lr`` on the last of ``steps`` steps
    (the schedule of every minimoe loop); 1.0 keeps it constant, below 1 lets the policy settle instead of drifting
    on noisy late batches."""
    weight_decay: float = 0.0
    """AdamW weight decay on weight matrices (``minimoe.optim.make_optimizer``: never on norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW (β1, β2). β2 = 0.99 (not pretraining's 0.95 or PyTorch's 0.999) lets the second-moment estimate follow
    the step-to-step swings of a policy gradient within ~100 steps."""
    on_nonfinite_reward: str = "raise"
    """What a NaN or ±inf reward does: "raise" (``ValueError`` naming the reward function) or "skip" (warn
    and skip the step: no update, its metrics recorded as NaN)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping."""
    seed: int = 0
    """Seeds the choice of training prompts and the sampling."""
    eval_every: int = 0
    """Run ``evaluate`` (greedy, held-out) every this many steps and at the end; 0 = never during training."""
    eval_n: int = 100
    """Held-out problems per evaluation."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "steps", "num_iterations", "max_new_tokens", "max_sampling_rounds",
                     "eval_n"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        for name in ("lr", "beta", "epsilon_low", "temperature", "weight_decay", "min_lr_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
                raise ValueError(f"{name} ({value!r}) must be a finite number")
        if not (isinstance(self.group_size, int) and self.group_size >= 2):
            raise ValueError(f"group_size ({self.group_size!r}) must be an integer >= 2: the advantage r − mean(group) "
                             "of a group of one is always 0, and its std (scale_rewards='group') is undefined")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type ({self.loss_type!r}) must be one of {LOSS_TYPES}")
        if self.scale_rewards not in SCALES:
            raise ValueError(f"scale_rewards ({self.scale_rewards!r}) must be one of {SCALES}")
        if not self.lr > 0:
            raise ValueError(f"lr ({self.lr}) must be positive")
        if not self.beta >= 0:
            raise ValueError(f"beta ({self.beta}) must be >= 0")
        if not 0 < self.epsilon_low < 1:
            raise ValueError(f"epsilon_low ({self.epsilon_low}) must lie in (0, 1)")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) must be positive or None")
        if not self.temperature > 0:
            raise ValueError(f"temperature ({self.temperature}) must be > 0: GRPO needs sampled, varied groups")
        if self.ref_reset_every is not None and not (isinstance(self.ref_reset_every, int) and self.ref_reset_every > 0):
            raise ValueError(f"ref_reset_every ({self.ref_reset_every!r}) must be a positive integer or None")
        if not (isinstance(self.min_lr_ratio, (int, float)) and 0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio!r}) must lie in [0, 1]")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"warmup ({self.warmup!r}) must be a non-negative integer")
        if not (isinstance(self.eval_every, int) and self.eval_every >= 0):
            raise ValueError(f"eval_every ({self.eval_every!r}) must be a non-negative integer (0 = never)")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed ({self.seed!r}) must be a non-negative integer")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay ({self.weight_decay}) must be non-negative")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip ({self.grad_clip}) must be positive or None")
        if len(tuple(self.betas)) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas ({self.betas!r}) must be two numbers in [0, 1)")
        if self.on_nonfinite_reward not in NONFINITE_REWARDS:
            raise ValueError(f"on_nonfinite_reward ({self.on_nonfinite_reward!r}) must be one of {NONFINITE_REWARDS}")
        format_prompt("", self.template)  # raises a ValueError naming the template when it has no {question}


class GRPOTrainer:
    """Trains `policy` in place with GRPO on problems from `task`, scored by `reward_fn(completions, problems)`.

    `task` provides ``sample(n, split, seed)`` of problems with ``question`` and ``is_correct(answer)``
    (``minimoe.tasks.ArithmeticTask``, ``CountdownTask``). Accuracy and format rate are always logged with
    ``accuracy_reward`` and ``format_reward``, whatever `reward_fn` optimises.

    `loss_fn` replaces ``grpo.grpo_loss`` (same signature), e.g. a student's own implementation; it may return the
    loss alone or ``(loss, stats)``. Statistics it does not report are logged as NaN.
    """

    def __init__(self, policy: nn.Module, tokenizer: CharTokenizer, task: Any, reward_fn: RewardFn,
                 cfg: GRPOConfig, loss_fn: Callable[..., Any] | None = None) -> None:
        if tokenizer.vocab_size > policy.cfg.vocab_size:
            raise ValueError(f"the tokenizer's vocab_size ({tokenizer.vocab_size}) exceeds the policy's "
                             f"({policy.cfg.vocab_size})")
        self.policy, self.tokenizer, self.task, self.reward_fn, self.cfg = policy, tokenizer, task, reward_fn, cfg
        self.loss_fn = grpo_loss if loss_fn is None else loss_fn
        self.ref = self._frozen_copy(policy)
        self.optimizer = make_optimizer(policy, cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.history = History(**{name: [] for name in GRPO_METRICS})
        self.step = 0
        self._draws = 0

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        ref = copy.deepcopy(model).eval()
        ref.requires_grad_(False)
        return ref

    def prompt_ids(self, problems: list[Any]) -> list[list[int]]:
        """Token ids (bos first) of each problem's prompt under ``cfg.template``."""
        return [self.tokenizer.encode(format_prompt(p.question, self.cfg.template), add_bos=True) for p in problems]

    def _sample(self) -> tuple[Rollout, list[Any]]:
        problems = self.task.sample(self.cfg.prompts_per_step, "train", seed=self.cfg.seed * 1_000_003 + self._draws)
        rollout = sample_groups(self.policy, self.tokenizer, self.prompt_ids(problems), self.cfg.group_size,
                                self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                seed=self.cfg.seed * 1_000_003 + self._draws)
        self._draws += 1
        return rollout, [p for p in problems for _ in range(self.cfg.group_size)]

    def train_step(self) -> dict[str, Any]:
        """One rollout and its `num_iterations` training steps (``minimoe.optim.training_step``: the GRPO loss plus
        the policy's balance and MTP losses, the schedule, the routing-bias update); returns (and records) the
        step's metrics: rewards and rollout statistics, ``grpo_loss``, KL, clip fraction, entropy and the training
        steps' mean record (``STEP_METRICS``: ``loss``, ``balance_loss``, ``expert_load``, ``max_vio``, …)."""
        cfg, G, start = self.cfg, self.cfg.group_size, time.perf_counter()
        kept: list[tuple[Rollout, torch.Tensor]] = []
        seen = {"reward": [], "accuracy": [], "format_rate": [], "response_length": [], "truncated_rate": []}
        terms: dict[str, list[torch.Tensor]] = {}
        n_groups = n_kept = n_zero_std = 0
        for _ in range(cfg.max_sampling_rounds if cfg.dynamic_sampling else 1):
            rollout, problems = self._sample()
            rewards = checked_rewards(self.reward_fn, rollout.completions, problems, step=self.step,
                                      nonfinite="raise" if cfg.on_nonfinite_reward == "raise" else "keep")  # (B,)
            seen["reward"].append(rewards)
            seen["accuracy"].append(accuracy_reward(rollout.completions, problems))
            seen["format_rate"].append(format_reward(rollout.completions, problems))
            seen["response_length"].append(rollout.lengths)
            seen["truncated_rate"].append(self._truncated(rollout))
            for column, values in reward_terms(self.reward_fn, rollout.completions, problems).items():
                terms.setdefault(column, []).append(values)
            if not torch.isfinite(rewards).all():  # on_nonfinite_reward="skip": no update on this step
                warnings.warn(f"step {self.step}: reward function {_name(self.reward_fn)} returned "
                              f"{int((~torch.isfinite(rewards)).sum())} non-finite rewards of {rewards.numel()}; "
                              "step skipped (on_nonfinite_reward='skip')", RuntimeWarning, stacklevel=2)
                kept, n_groups, n_kept = [], max(n_groups, 1), 0
                break
            grouped = rewards.view(-1, G)  # (B/G, G)
            # All-equal groups carry no signal. Compare extremes: a float32 std of equal rewards (e.g. eight 0.1s)
            # is ~1e-8, not 0.
            varied = grouped.amax(dim=1) > grouped.amin(dim=1)  # (B/G,)
            n_zero_std += int((~varied).sum())
            keep = varied if cfg.dynamic_sampling else torch.ones_like(varied)  # DAPO drops the all-equal groups
            n_groups += keep.numel()
            if keep.any():
                rows = keep.repeat_interleave(G)
                kept.append((rollout.select_groups(keep), rewards[rows]))
                n_kept += int(keep.sum())
            if n_kept >= cfg.prompts_per_step:
                break

        metrics = {name: torch.cat(values).float().mean().item() for name, values in seen.items()}
        metrics.update(_length_split(torch.cat(seen["response_length"]), torch.cat(seen["accuracy"])))
        metrics.update({column: torch.cat(values).float().mean().item() for column, values in terms.items()})
        metrics.update(self._update(kept) if kept else self._no_update())
        metrics.update(groups_kept=n_kept / n_groups, zero_std_groups=n_zero_std / n_groups,
                       seconds=time.perf_counter() - start)
        self.history.record(step=self.step, **metrics)
        self.step += 1
        if cfg.ref_reset_every is not None and self.step % cfg.ref_reset_every == 0:
            self.ref.load_state_dict(self.policy.state_dict())
        return metrics

    def _truncated(self, rollout: Rollout) -> torch.Tensor:
        """1.0 where a completion has no eos: sampling stopped it at ``max_new_tokens``. Shapes: -> (B,)."""
        last = rollout.completion_ids.gather(1, (rollout.lengths.long() - 1).clamp(min=0)[:, None]).squeeze(1)
        return (last != self.tokenizer.eos_id).float()

    def _no_update(self) -> dict[str, Any]:
        """The record of a step that trained on nothing: NaN everywhere, one NaN load per expert of each MoE layer
        (of the main model and the MTP modules) so that the columns stay rectangular."""
        n_moe = sum(isinstance(m, DeepSeekMoE) for m in self.policy.modules())
        nan_load = [[math.nan] * self.policy.cfg.n_routed_experts for _ in range(n_moe)]
        return {"grpo_loss": math.nan, "kl": math.nan, "clip_fraction": math.nan, "clip_low": math.nan,
                "clip_high": math.nan, "entropy": math.nan,
                **{name: math.nan for name in STEP_METRICS}, "expert_load": nan_load, "max_vio": [math.nan] * n_moe}

    def _update(self, kept: list[tuple[Rollout, torch.Tensor]]) -> dict[str, float]:
        """``num_iterations`` training steps on the kept groups; the mean of their records, with the GRPO loss, the
        KL and entropy of the first pass (π_θ = π_old) and the mean clip fraction."""
        cfg = self.cfg
        rollout = concat_rollouts([r for r, _ in kept], self.tokenizer.pad_id)
        rewards = torch.cat([r for _, r in kept])  # (B,)
        advantages = group_advantages(rewards, cfg.group_size, cfg.scale_rewards)  # (B,)
        with torch.no_grad():
            ref_logprobs = score_completions(self.ref, rollout, temperature=cfg.temperature).logprobs  # (B, T)
        self.policy.train()
        old_logprobs, records = None, []
        for iteration in range(cfg.num_iterations):
            scores = score_completions(self.policy, rollout, temperature=cfg.temperature)  # routing kept for balance
            if old_logprobs is None:  # π_old is the policy that sampled: the first pass scores it
                old_logprobs = scores.logprobs.detach()  # (B, T)
                first_entropy = (scores.entropy.sum() / rollout.completion_mask.sum()).item()
            out = self.loss_fn(scores.logprobs, old_logprobs, advantages, rollout.completion_mask,
                               ref_logprobs=ref_logprobs, beta=cfg.beta, epsilon_low=cfg.epsilon_low,
                               epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                               max_completion_length=cfg.max_new_tokens)
            loss, stats = out if isinstance(out, tuple) else (out, {})
            if not (isinstance(loss, torch.Tensor) and loss.dim() == 0 and loss.requires_grad):
                raise ValueError("loss_fn must return a scalar tensor that depends on logprobs (or (loss, stats))")
            if iteration == 0:
                first_kl = float(stats.get("kl", math.nan))
            record = training_step(self.policy, self.optimizer, loss, scores.output, step=self.step, cfg=cfg,
                                   hint=f"pass {iteration} of the GRPO update")
            records.append({"grpo_loss": loss.item(), "clip_fraction": float(stats.get("clip_region", math.nan)),
                            "clip_low": float(stats.get("clip_low", math.nan)),
                            "clip_high": float(stats.get("clip_high", math.nan)), **record})
        return {**_mean_record(records), "kl": first_kl, "entropy": first_entropy}

    def train(self, steps: int | None = None) -> History:
        """Run `steps` (default ``cfg.steps``) GRPO steps with a progress bar; returns the history."""
        steps = self.cfg.steps if steps is None else steps
        bar = tqdm(range(steps), desc="grpo", disable=not self.cfg.progress)
        for i in bar:
            m = self.train_step()
            shown = {"reward": f"{m['reward']:.2f}", "acc": f"{m['accuracy']:.2f}",
                     "len": f"{m['response_length']:.0f}", "kl": f"{m['kl']:.3f}"}
            if self.cfg.eval_every and ((i + 1) % self.cfg.eval_every == 0 or i == steps - 1):
                accuracy = self.evaluate(n=self.cfg.eval_n)["accuracy"]
                self.history.eval_step.append(self.step)
                self.history.eval_accuracy.append(accuracy)
                shown["heldout"] = f"{accuracy:.2f}"
            bar.set_postfix(shown)
        return self.history

    @torch.no_grad()
    def evaluate(self, split: str = "heldout", n: int = 100, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
        """Greedy exact-match accuracy, format rate and mean length on `n` problems of `split`."""
        return evaluate_policy(self.policy, self.tokenizer, self.task, template=self.cfg.template,
                               max_new_tokens=self.cfg.max_new_tokens, split=split, n=n, seed=seed,
                               batch_size=batch_size)

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write policy config and weights, optimiser state, step, history and the GRPOConfig atomically to `path`
        (the ``minimoe.checkpoint`` format)."""
        return save_checkpoint(path, self.policy, self.optimizer, self.history, step=self.step,
                               extra={"grpo_config": dataclasses.asdict(self.cfg)})


@torch.no_grad()
def evaluate_policy(model: nn.Module, tokenizer: CharTokenizer, task: Any, *, template: str = "compact",
                    max_new_tokens: int = 64, split: str = "heldout", n: int = 100, seed: int = 0,
                    batch_size: int = 256) -> dict[str, float]:
    """Greedy decoding on `n` problems of `split`: exact-match accuracy (the checked `<answer>`), format rate and
    mean completion length in tokens."""
    problems = task.sample(n, split, seed=seed)
    completions, lengths = [], []
    for i in range(0, n, batch_size):
        chunk = problems[i:i + batch_size]
        prompts = [tokenizer.encode(format_prompt(p.question, template), add_bos=True) for p in chunk]
        rollout = sample_groups(model, tokenizer, prompts, 1, max_new_tokens, temperature=0.0)
        completions += rollout.completions
        lengths.append(rollout.lengths)
    return {"accuracy": accuracy_reward(completions, problems).mean().item(),
            "format_rate": format_reward(completions, problems).mean().item(),
            "response_length": torch.cat(lengths).mean().item()}


class GRPOCheckpoint(NamedTuple):
    """What ``load_grpo_checkpoint`` returns."""

    model: nn.Module
    config: GRPOConfig
    history: History
    optimizer_state: dict[str, Any]
    step: int


def load_grpo_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> GRPOCheckpoint:
    """Rebuild the policy, its GRPOConfig and history from a ``GRPOTrainer.save_checkpoint`` file."""
    ckpt = load_checkpoint(path, map_location)
    if "grpo_config" not in ckpt.extra:
        raise CheckpointError(f"checkpoint {path} is not a GRPO checkpoint (no GRPOConfig inside; load it with "
                              "minimoe.checkpoint.load_checkpoint)")
    settings = dict(ckpt.extra["grpo_config"])
    settings["betas"] = tuple(settings.get("betas", (0.9, 0.99)))
    return GRPOCheckpoint(ckpt.model, GRPOConfig(**settings), ckpt.history, ckpt.optimizer_state, ckpt.step)


def reward_term_column(fn: Any) -> str:
    """The history column of one term of a ``CombinedReward``: ``"reward_"`` + the function's name."""
    return f"reward_{_name(fn)}"


def reward_terms(reward_fn: RewardFn, completions: list[str], problems: list[Any]) -> dict[str, torch.Tensor]:
    """Each term of a ``CombinedReward``, unweighted, by history column (``reward_term_column``); {} for any other
    reward function. Shapes: N completions -> {column: (N,)}."""
    if not isinstance(reward_fn, CombinedReward):
        return {}
    return {reward_term_column(fn): checked_rewards(fn, completions, problems, nonfinite="keep")
            for fn, _ in reward_fn.terms}


def _length_split(lengths: torch.Tensor, correct: torch.Tensor) -> dict[str, float | None]:
    """Mean length of the right and of the wrong samples; None where there are none (not NaN, which would make a
    history differ from itself after a checkpoint round trip). Shapes: lengths, correct (N,)."""
    right = correct > 0.5

    def mean(selected: torch.Tensor) -> float | None:
        return selected.float().mean().item() if selected.numel() else None

    return {"length_correct": mean(lengths[right]), "length_wrong": mean(lengths[~right])}


def _mean_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of records with the same keys, whose values are numbers or nested lists of numbers."""
    def mean(values: list) -> Any:
        if isinstance(values[0], list):
            return [mean(list(column)) for column in zip(*values)]
        return sum(values) / len(values)

    return {name: mean([r[name] for r in records]) for name in records[0]}


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or repr(fn)
