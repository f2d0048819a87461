"""Chapter 8's experiment: distillation against RL on a 4× smaller student (DeepSeek-R1 §4.1, Table 6, in miniature).

DeepSeek-R1 §4.1 asks whether a small model trained with large-scale RL matches the same model distilled from a
strong teacher; on Qwen-32B-Base it did not (47.0 against 72.6 pass@1 on AIME 2024, Table 6). Here, on chapter 7's
three-digit additions, per seed:

1. a teacher: chapter 7's shipped SFT policy (``tiny-v3``) trained with chapter 7's GRPO recipe (``train_teacher``,
   once for all seeds);
2. a student base: ``minimoe.distill.student_config`` (~4× fewer parameters) fine-tuned on the sloppy teacher's
   worked additions exactly as chapter 7's policy was (``student_base``);
3. three copies of the base, one per arm, at about the same CPU cost: (a) ``rl``, GRPO on the student with
   ``ArmsConfig.rl_lr``; (b) ``traces``, R1's recipe: rejection-sample the teacher, SFT on the kept traces;
   (c) ``logits``, ``kd_loss`` against the teacher's logits on the same traces. The teacher's sampling (and, for (c),
   its forward pass) is charged to (b) and (c).

The arms run fixed step counts (``ArmsConfig``), not a timer, so a run is reproducible: the same seed gives the same
numbers in chapter 8 and in ``benchmarks/distill_demo.py``; each arm's CPU seconds are measured and reported, so the
fairness of the budget can be read off every run.

Why the RL arm has its own recipe. Chapter 7's (lr 3e-4, β = 0, tuned for the teacher) destroys this student: at
its defaults the old benchmark took seeds 0, 1, 2 from 46.0 / 16.5 / 24.0% held-out to 7.5 / 0.5 / 0.5% after
~150 steps. The trainer's history shows how: the sampled accuracy falls within the first 15 steps (seed 1: 12% →
2.5%) while the KL to the starting policy climbs (0.4 per token by step 30) and the share of groups whose rewards
are all equal, which teach nothing, rises from a half to 0.8-0.95; entropy rises slightly, the completion length
and format stay put. Neither Dr. GRPO's unscaled advantages, a sampling temperature of 0.7 nor switching off the
routing-bias update saved it; a lower rate did (lr 5e-5: seed 1 16.5% → 65.5% in 150 steps). At lr 5e-5 for 40
steps, 3 of 8 seeds still ended a few problems below their start (seeds 4 and 7: 8 of 200 problems); the KL
weight β = 0.04 of DeepSeekMath §4.2 turned both into gains (17.5 → 28.0%, 23.5 → 27.5%) and left the others' gains intact
(seed 1: 63.5 → 63.0%). A base that almost never samples a right answer (seed 6, 2.5% held-out, 1% of samples)
gives GRPO nothing to reinforce: that is R1 §4.1's point, and the benchmark says so where it happens.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from minimoe.distill import KDConfig, Traces, cpu_seconds, distill_logits, rejection_sample, student_config
from minimoe.forking import fork_map
from minimoe.history import History
from minimoe.model import Transformer
from minimoe.rl import demo
from minimoe.tasks.tokenizer import CharTokenizer
from minimoe.train import TrainConfig, train

__all__ = ["ARMS", "ArmsConfig", "SeedResult", "paired_difference", "run_arms", "run_rl", "run_seed", "sample_traces",
           "student_base", "t_quantile", "train_teacher"]

ARMS = ("rl", "traces", "logits")
"""(a) GRPO on the student, (b) SFT on the teacher's filtered traces (R1's recipe), (c) logit distillation."""


@dataclass(frozen=True)
class ArmsConfig:
    """Settings of the three-arm comparison; the defaults are what chapter 8 and the benchmark run."""

    teacher_steps: int = 40
    """GRPO steps of the teacher from the shipped SFT policy (chapter 7's recipe)."""
    student_sft_steps: int = 800
    """SFT steps of the student base on the sloppy solutions (batch 32, lr 5e-3, as chapter 7's policy)."""
    trace_prompts: int = 256
    """Training problems sampled from the teacher for (b) and (c)."""
    trace_samples: int = 2
    """Teacher samples per problem (temperature 1; only correct, well-formatted ones are kept)."""
    rl_steps: int = 40
    """GRPO steps of arm (a) (64 completions each, chapter 7's settings but ``rl_lr``)."""
    rl_lr: float = 5e-5
    """Peak learning rate of arm (a); chapter 7's 3e-4 collapses the student (see the module docstring)."""
    rl_beta: float = 0.04
    """β of arm (a)'s KL to the student base (the value of DeepSeekMath §4.2; chapter 7 uses 0)."""
    sft_steps: int = 400
    """SFT steps of arm (b), batch 32."""
    sft_lr: float = 3e-3
    """Peak learning rate of arm (b) (warm-up 10 steps, cosine to 0.1·lr)."""
    kd_steps: int = 300
    """``kd_loss`` steps of arm (c), batch 32 (forward KL, τ = 1)."""
    kd_lr: float = 3e-3
    """Peak learning rate of arm (c)."""
    eval_n: int = 200
    """Held-out problems per greedy exact-match evaluation."""

    def __post_init__(self) -> None:
        for name in ("teacher_steps", "student_sft_steps", "trace_prompts", "trace_samples", "rl_steps", "sft_steps",
                     "kd_steps", "eval_n"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"{name} ({value!r}) must be a positive integer")
        if not (isinstance(self.rl_beta, (int, float)) and math.isfinite(self.rl_beta) and self.rl_beta >= 0):
            raise ValueError(f"rl_beta ({self.rl_beta!r}) must be a number >= 0")
        for name in ("rl_lr", "sft_lr", "kd_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} ({value!r}) must be a positive number")


@dataclass
class SeedResult:
    """One seed of the comparison: held-out accuracies in [0, 1], CPU seconds (this process's) and steps per arm,
    the traces' statistics, the RL arm's history and the trained students (``students[arm]``)."""

    seed: int
    base: float
    base_cpu: float
    kept: int
    sampled: int
    trace_cpu: float
    accuracy: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    rl_history: History | None = None
    rl_start_sampled: float = 0.0
    """Arm (a)'s sampled accuracy over its first 5 steps: how often the base stumbles on a right answer."""
    students: dict[str, nn.Module] = field(default_factory=dict)


def train_teacher(cfg: ArmsConfig) -> nn.Module:
    """Chapter 7's recipe: the shipped SFT policy, then ``cfg.teacher_steps`` GRPO steps (seed 0)."""
    teacher = demo.load_sft_policy()
    demo.make_trainer(teacher, steps=cfg.teacher_steps, seed=0, progress=False).train()
    return teacher


def student_base(seed: int, cfg: ArmsConfig) -> nn.Module:
    """A fresh student (``student_config``) after SFT on the sloppy teacher's solutions
    (``minimoe.rl.demo.sft_examples``, slips 0.6), as chapter 7's policy was made."""
    tokenizer = CharTokenizer()
    inputs, targets = demo.sft_examples(tokenizer, 20000, slip_prob=0.6, seed=seed)
    torch.manual_seed(seed)
    student = Transformer(student_config(tokenizer.vocab_size))
    train(student, lambda step, b, t, g: _rows(inputs, targets, b, g),
          TrainConfig(steps=cfg.student_sft_steps, batch_size=32, seq_len=inputs.shape[1], lr=5e-3,
                      warmup=min(30, cfg.student_sft_steps), seed=seed, progress=False))
    return student


def _rows(inputs: torch.Tensor, targets: torch.Tensor, batch: int, generator: torch.Generator):
    rows = torch.randint(0, len(inputs), (batch,), generator=generator)
    return inputs[rows], targets[rows]


def run_rl(student: nn.Module, seed: int, cfg: ArmsConfig, **overrides: Any) -> History:
    """Arm (a): chapter 7's GRPO trainer on the student, ``cfg.rl_steps`` steps at ``cfg.rl_lr`` with KL weight
    ``cfg.rl_beta`` (``overrides`` replace any GRPOConfig field, e.g. ``lr=3e-4, beta=0`` for chapter 7's recipe);
    returns the trainer's history."""
    settings = {"steps": cfg.rl_steps, "lr": cfg.rl_lr, "beta": cfg.rl_beta, **overrides}
    return demo.make_trainer(student, seed=seed, progress=False, **settings).train()


def sample_traces(teacher: nn.Module, seed: int, cfg: ArmsConfig) -> Traces:
    """R1's data for arms (b) and (c): ``rejection_sample`` of the teacher on training problems."""
    return rejection_sample(teacher, CharTokenizer(), demo.addition_task(), cfg.trace_prompts, cfg.trace_samples,
                            template=demo.TEMPLATE, max_new_tokens=demo.MAX_NEW_TOKENS, seed=seed)


def run_traces(student: nn.Module, traces: Traces, seed: int, cfg: ArmsConfig) -> History:
    """Arm (b), R1's recipe: SFT (next-token cross-entropy on the completions) on the teacher's kept traces."""
    return train(student, lambda step, b, t, g: traces.batch(torch.randint(0, len(traces.inputs), (b,), generator=g)),
                 TrainConfig(steps=cfg.sft_steps, batch_size=32, seq_len=traces.inputs.shape[1], lr=cfg.sft_lr,
                             warmup=min(10, cfg.sft_steps), seed=seed, progress=False))


def run_logits(student: nn.Module, teacher_logits: torch.Tensor, traces: Traces, seed: int, cfg: ArmsConfig) -> History:
    """Arm (c): ``distill_logits`` (forward KL, τ = 1) against the teacher's precomputed logits on the traces."""
    return distill_logits(student, teacher_logits, traces, KDConfig(steps=cfg.kd_steps, lr=cfg.kd_lr,
                                                                    warmup=min(10, cfg.kd_steps), seed=seed,
                                                                    progress=False))


def run_seed(teacher: nn.Module, seed: int, cfg: ArmsConfig) -> SeedResult:
    """One seed: the student base (``student_base``), the teacher's traces (``sample_traces``), then ``run_arms``."""
    base, base_cpu = cpu_seconds(lambda: student_base(seed, cfg))
    traces, trace_cpu = cpu_seconds(lambda: sample_traces(teacher, seed, cfg))
    return run_arms(teacher, base, traces, seed, cfg, base_cpu=base_cpu, trace_cpu=trace_cpu)


def _arm(arm: str, base: nn.Module, seed: int, cfg: ArmsConfig, traces: Traces,
         teacher_logits: torch.Tensor) -> tuple[History, float, float, nn.Module]:
    """Run one arm on a copy of ``base``: (history, CPU seconds, held-out accuracy, trained student)."""
    student = copy.deepcopy(base)
    run = {"rl": lambda: run_rl(student, seed, cfg),
           "traces": lambda: run_traces(student, traces, seed, cfg),
           "logits": lambda: run_logits(student, teacher_logits, traces, seed, cfg)}[arm]
    history, cpu = cpu_seconds(run)
    return history, cpu, _accuracy(student, cfg), student


def run_arms(teacher: nn.Module, base: nn.Module, traces: Traces, seed: int, cfg: ArmsConfig, *,
             base_cpu: float, trace_cpu: float, workers: int = 1) -> SeedResult:
    """The three arms, each from a copy of ``base`` (left untouched), each evaluated greedily on ``cfg.eval_n``
    held-out problems; ``trace_cpu`` (the teacher's sampling) is charged to (b) and (c), and the teacher's forward
    pass over the traces to (c). ``workers`` > 1 runs the arms in that many forked processes of one thread each:
    every arm is seeded on its own, so only the wall time changes, never a number (``minimoe.forking``)."""
    with torch.no_grad():
        teacher_logits, logits_cpu = cpu_seconds(lambda: teacher.eval()(traces.inputs).logits)  # (N, L, V)
    result = SeedResult(seed, _accuracy(base, cfg), base_cpu, len(traces.inputs), traces.n_sampled, trace_cpu)
    outcomes = fork_map(lambda arm: _arm(arm, base, seed, cfg, traces, teacher_logits), ARMS, workers)
    charged = {"rl": 0.0, "traces": trace_cpu, "logits": trace_cpu + logits_cpu}
    for arm, (history, cpu, accuracy, student) in zip(ARMS, outcomes):
        if arm == "rl":
            result.rl_history = history
            result.rl_start_sampled = statistics.mean(history.accuracy[:5])
        result.accuracy[arm], result.cpu[arm] = accuracy, cpu + charged[arm]
        result.steps[arm], result.students[arm] = len(history.step), student
    return result


def _accuracy(model: nn.Module, cfg: ArmsConfig) -> float:
    return demo.heldout_accuracy(model, cfg.eval_n)["accuracy"]


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (bisection on its CDF, integrated with
    Simpson's rule), e.g. ``t_quantile(0.975, 4)`` ≈ 2.776 for a 95% interval from five paired seeds."""
    if not 0.5 <= p < 1:
        raise ValueError(f"p ({p!r}) must lie in [0.5, 1)")
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"df ({df!r}) must be a positive integer")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 2000) -> float:  # 1/2 + ∫_0^x pdf, Simpson with n (even) panels
        h = x / n
        pdf = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (pdf[0] + pdf[-1] + 4 * sum(pdf[1:-1:2]) + 2 * sum(pdf[2:-1:2]))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of the per-seed differences a − b and the half-width of its ``confidence`` t-interval. The arms of one
    seed share a student base and a teacher, so pairing removes the spread between bases from the comparison."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equally long lists of at least 2 paired values, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return statistics.mean(diffs), half
