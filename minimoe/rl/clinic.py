"""A GRPO failure clinic: each failure of chapter 12 as the settings of one short run from the shipped SFT policy.

Every case is a pair of runs of ``GRPOTrainer`` on the R1-Zero demo (``minimoe.rl.demo``: three-digit additions, the
shipped SFT policy, R1-Zero's accuracy + format reward), one with the failure and one with its fix, differing only
in the settings ``CASES`` lists. ``benchmarks/grpo_clinic.py`` and chapter 12 both run them through ``Clinic``, so the
numbers of the book and of the benchmark come from the same calls. A run's settings are ``GRPOConfig`` overrides of
``demo.grpo_settings()`` plus three choices of the clinic:

    reward     "strict": R1-Zero's rule, 1·r_acc + 0.1·r_format (DeepSeek-R1 §2.2.2);
               "majority": 1·r_agree + 0.1·r_format, where r_agree = 1 when the answer agrees with the most common
               answer of its group (a label-free reward that checks consistency, not the sum; ``majority_reward``)
    task       "addition": three-digit additions (the demo's); "harder": operands of three or four digits, so three
               problems in four have a four-digit operand the SFT data never showed
    balancing  True: the policy's auxiliary-loss-free bias update (DeepSeek-V3 §2.1.2) runs during RL; False: γ = 0

The failures (and the papers that name them): a loss of ~0 that says nothing (advantages sum to zero per group,
DeepSeekMath Eq. (3)); reward hacking; groups without signal and dynamic sampling (DAPO §3.2); the length bias of
per-sequence normalisation (Dr. GRPO §3.1); entropy collapse and clip-higher (DAPO §3.1); instability from too large
steps; routing collapse of an MoE policy without balancing (DeepSeek-V3 §2.1.2).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from minimoe.forking import fork_map
from minimoe.history import History
from minimoe.moe.balance import expert_load
from minimoe.rl import demo
from minimoe.rl.grpo import group_advantages, grpo_loss
from minimoe.rl.rewards import CombinedReward, accuracy_reward, combine_rewards, format_reward
from minimoe.rl.rollout import score_completions
from minimoe.rl.trainer import GRPOTrainer, evaluate_policy
from minimoe.tasks.arithmetic import ArithmeticTask
from minimoe.tasks.template import Checkable, format_completion, format_prompt, parse_completion
from minimoe.tasks.tokenizer import CharTokenizer

CLINIC_STEPS = 30
"""GRPO steps of every clinic run: about 10-25 s of one CPU core each."""
EVAL_N = 200
"""Held-out problems of each greedy evaluation (its standard error is at most 3.5 points)."""
REWARDS = ("strict", "majority")
TASKS = ("addition", "harder")


def majority_reward(completions: Sequence[str], problems: Sequence[Checkable]) -> torch.Tensor:
    """1.0 where a completion's answer agrees with the most common answer among the completions of the same problem
    (its group), else 0.0; a missing answer never agrees. It never looks at the sum: consistency, not correctness
    (the label-free "majority vote" reward of self-consistency methods). Ties go to the answer seen first.

    Shapes: completions: N strings, problems: N problems (G consecutive copies per group) -> (N,) float32
    """
    if len(problems) != len(completions):
        raise ValueError(f"problems must have one entry per completion; got {len(problems)} for {len(completions)}")
    answers = [parse_completion(c).answer for c in completions]
    groups: dict[str, list[int]] = {}
    for row, problem in enumerate(problems):
        groups.setdefault(getattr(problem, "question", str(problem)), []).append(row)
    reward = torch.zeros(len(completions), dtype=torch.float32)
    for rows in groups.values():
        votes = Counter(answers[r] for r in rows if answers[r] is not None)
        if votes:
            top = votes.most_common(1)[0][0]
            for r in rows:
                reward[r] = float(answers[r] == top)
    return reward


def make_reward(name: str) -> CombinedReward:
    """The clinic's rewards (see the module docstring): "strict" or "majority", each with 0.1 · format."""
    if name not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}; got {name!r}")
    first = accuracy_reward if name == "strict" else majority_reward
    return combine_rewards([(first, 1.0), (format_reward, 0.1)])


def make_task(name: str) -> ArithmeticTask:
    """The clinic's tasks: "addition" (the demo's) or "harder" (operands of three or four digits)."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {name!r}")
    return demo.addition_task() if name == "addition" else ArithmeticTask(min_digits=3, max_digits=4,
                                                                        operations=("+",))


@dataclass
class ClinicRun:
    """One clinic run: its settings, history, the greedy held-out measurements before and after, and its CPU time."""

    settings: dict[str, Any]
    history: History
    before: dict[str, float]
    after: dict[str, float]
    cpu_seconds: float
    policy: nn.Module


def clinic_run(sft: nn.Module | None = None, *, reward: str = "strict", task: str = "addition",
               balancing: bool = True, steps: int = CLINIC_STEPS, eval_every: int = 10, eval_n: int = EVAL_N,
               seed: int = 0, **overrides: Any) -> ClinicRun:
    """Train a copy of `sft` (default: the shipped SFT policy) for `steps` GRPO steps with the demo's settings
    changed by `overrides` and the clinic's `reward`, `task` and `balancing`; greedy held-out accuracy of `task`
    every `eval_every` steps, before and after."""
    policy = copy.deepcopy(demo.load_sft_policy() if sft is None else sft)
    if not balancing:
        policy.cfg = policy.cfg.replace(bias_update_speed=0.0)
    tokenizer, problems = CharTokenizer(), make_task(task)
    cfg = demo.grpo_config(steps=steps, eval_every=eval_every, eval_n=eval_n, seed=seed, progress=False,
                           **overrides)
    before = evaluate_policy(policy, tokenizer, problems, template=cfg.template, max_new_tokens=cfg.max_new_tokens,
                             n=eval_n)
    trainer = GRPOTrainer(policy, tokenizer, problems, make_reward(reward), cfg)
    start = time.process_time()
    history = trainer.train()
    cpu = time.process_time() - start
    after = trainer.evaluate(n=eval_n)
    settings = dict(reward=reward, task=task, balancing=balancing, steps=steps, seed=seed, **overrides)
    return ClinicRun(settings, history, before, after, cpu, policy)


class Clinic:
    """Runs clinic settings once each: the healthy run is the fix of several cases, and is trained only once."""

    def __init__(self, sft: nn.Module | None = None, **common: Any) -> None:
        self.sft = demo.load_sft_policy() if sft is None else sft
        self.common, self.runs = common, {}

    def _key(self, settings: dict[str, Any]) -> tuple:
        return tuple(sorted({**self.common, **settings}.items()))

    def run(self, **settings: Any) -> ClinicRun:
        key = self._key(settings)
        if key not in self.runs:
            self.runs[key] = clinic_run(self.sft, **dict(key))
        return self.runs[key]

    def prepare(self, cases: Sequence[str] | None = None, *, workers: int = 1) -> None:
        """Train every setting that ``cases`` (default: all) need and that has not run yet, in ``workers``
        processes (``minimoe.forking.fork_map``: forked, Linux and macOS). Every run is seeded on its own and a
        worker uses one thread, as the chapter does, so ``workers`` changes only the wall time, never a number."""
        names = list(CASES) if cases is None else list(cases)
        for name in names:
            if name not in CASES:
                raise ValueError(f"unknown case {name!r}; the clinic has {list(CASES)}")
        todo = list(dict.fromkeys(self._key(CASES[n][part]) for n in names for part in ("failure", "fix")))
        todo = [key for key in todo if key not in self.runs]
        runs = fork_map(lambda key: clinic_run(self.sft, **dict(key)), todo, workers)
        self.runs.update(zip(todo, runs))

    def case(self, name: str) -> tuple[ClinicRun, ClinicRun]:
        """The failure and the fix of ``CASES[name]``."""
        if name not in CASES:
            raise ValueError(f"unknown case {name!r}; the clinic has {list(CASES)}")
        return self.run(**CASES[name]["failure"]), self.run(**CASES[name]["fix"])


CASES: dict[str, dict[str, Any]] = {
    "reward hacking": {"failure": dict(reward="majority"), "fix": dict(),
                       "watch": ("reward", "reward_majority_reward", "accuracy")},
    "zero-advantage groups": {"failure": dict(task="harder"),
                              "fix": dict(task="harder", dynamic_sampling=True, max_sampling_rounds=3),
                              "watch": ("zero_std_groups", "groups_kept", "accuracy")},
    "length bias": {"failure": dict(loss_type="grpo"), "fix": dict(loss_type="dr_grpo", scale_rewards="none"),
                    "watch": ("length_correct", "length_wrong", "truncated_rate")},
    "entropy collapse": {"failure": dict(temperature=0.5, epsilon_high=None), "fix": dict(),
                         "watch": ("entropy", "zero_std_groups", "clip_high")},
    "instability": {"failure": dict(lr=2e-3, warmup=0, num_iterations=4), "fix": dict(),
                    "watch": ("kl", "clip_fraction", "grad_norm")},
    "routing collapse": {"failure": dict(balancing=False), "fix": dict(), "watch": ("max_vio",)},
}
"""Each failure and its fix as ``clinic_run`` settings (``dict()`` is the healthy run: the demo's settings), and the
history columns that reveal it."""


def first_last(history: History, column: str, window: int = 5) -> tuple[float, float] | None:
    """Mean of a history column over its first and its last `window` recorded values (``max_vio``, one value per
    MoE layer: the last layer's); None and NaN values are skipped; None when the history lacks the column."""
    if column not in history.columns:
        return None
    values = [v[-1] if isinstance(v, list) else v for v in history.columns[column]]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return statistics.fmean(values[:window]), statistics.fmean(values[-window:])


@torch.no_grad()
def probe_expert_load(policy: nn.Module, n: int = EVAL_N) -> list[torch.Tensor]:
    """The expert load of each MoE layer of `policy` on one fixed probe batch: prompt + correct worked solution
    (``demo.addition_trace``) of the first `n` held-out additions with a three-digit sum, which all have one length
    (no padding to route). The load of a training step comes from that step's 64 samples and jumps from step to
    step; this one compares policies on the same tokens.

    Shapes: -> one (E,) tensor of shares per MoE layer.
    """
    tokenizer = CharTokenizer()
    problems = [p for p in demo.addition_task().sample(4 * n, "heldout", seed=0) if p.target < 1000][:n]
    rows = [tokenizer.encode(format_prompt(p.question, demo.TEMPLATE), add_bos=True)
            + tokenizer.encode(format_completion(*demo.addition_trace(p.a, p.b)), add_eos=True) for p in problems]
    assert len({len(row) for row in rows}) == 1, "probe sequences must share one length"
    was_training = policy.training
    output = policy.eval()(torch.tensor(rows))  # (n, L) tokens
    policy.train(was_training)
    return [expert_load(record.experts, policy.cfg.n_routed_experts) for record in output.routing]


def first_step(sft: nn.Module | None = None, *, seed: int = 0) -> dict[str, Any]:
    """The anatomy of GRPO's first step from `sft` (default: the shipped SFT policy) under the demo's settings: one
    rollout, its rewards, advantages, their sum per group, the GRPO loss (ρ = 1 on the first pass) and the gradient
    norm that loss nevertheless carries.

    Shapes: -> rewards (B,), advantages (B,), group_sums (B/G,), loss float, grad_norm float.
    """
    policy = copy.deepcopy(demo.load_sft_policy() if sft is None else sft)
    trainer = demo.make_trainer(policy, seed=seed, progress=False)
    cfg = trainer.cfg
    rollout, problems = trainer._sample()
    rewards = trainer.reward_fn(rollout.completions, problems)
    advantages = group_advantages(rewards, cfg.group_size, cfg.scale_rewards)
    logprobs = score_completions(policy, rollout, temperature=cfg.temperature).logprobs
    loss, stats = grpo_loss(logprobs, logprobs.detach(), advantages, rollout.completion_mask,
                            epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high, loss_type=cfg.loss_type,
                            max_completion_length=cfg.max_new_tokens)
    policy.zero_grad()
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in policy.parameters() if p.grad is not None)).item()
    return {"rewards": rewards, "advantages": advantages, "group_sums": advantages.view(-1, cfg.group_size).sum(1),
            "loss": loss.item(), "grad_norm": grad_norm, "ratio": stats["ratio"]}


def token_weights(lengths: Sequence[int], rewards: Sequence[float], loss_type: str, *,
                  max_completion_length: int) -> torch.Tensor:
    """The weight ∂L/∂log π(o_{i,t}) of each token of one group (ρ = 1), per completion, under `loss_type`: the
    push a token receives. "grpo" divides by |o_i| (DeepSeekMath Eq. (3)), so a long wrong answer is pushed down
    less per token than a short one, and a short right answer up more (Dr. GRPO §3.1); "dr_grpo" divides by the
    constant B·L_max and its advantages are not divided by the std.

    Shapes: lengths, rewards: G numbers -> (G,) weight of every token of completion i.
    """
    lengths = torch.as_tensor(lengths)
    T = int(lengths.max())
    mask = (torch.arange(T) < lengths[:, None]).float()  # (G, T)
    scale = "none" if loss_type == "dr_grpo" else "group"
    advantages = group_advantages(torch.as_tensor(rewards, dtype=torch.float32), len(lengths), scale)  # (G,)
    logprobs = torch.zeros(len(lengths), T, requires_grad=True)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, mask, loss_type=loss_type,
                        max_completion_length=max_completion_length)
    loss.backward()
    return -logprobs.grad[:, 0]  # the same for every token of a completion; minus: weight of gradient descent

