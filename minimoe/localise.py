"""Chapter 11's experiment: teach chapter 7's policy its additions in Traditional Chinese, five ways, and measure
what it gains (local accuracy) against what it forgets (original accuracy).

The starting model is chapter 7's shipped SFT policy (``minimoe.rl.demo.load_sft_policy``), which writes
"347+285=" → ``<think>7+5+0=12,…</think><answer>…</answer>`` and, like its sloppy teacher, rarely carries. The local
data are the same teacher's worked solutions (same slip probability, so the only new thing is the language) for
questions written 「三百四十七加二百八十五是多少？」 or 「…係幾多？」 (``minimoe.tasks.chinese``), which need new tokens.
Every method starts from the same extended vocabulary (``extend_vocabulary``, rows mapped from their meanings: 三 → "3",
加 → "+"), trains the same number of steps on the same batches with ``minimoe.optim.training_step``, and differs
only in what it trains:

========== =====================================================================================================
full       every weight (the new rows included), local data only
replay     every weight, ``replay_fraction`` of each batch from the original data (``replay_rows``)
lora       LoRA (Hu et al. 2021) on attention and expert projections, and the new vocabulary rows
experts    new routed experts + their router rows (one new expert group per MoE layer), and the new rows
embeddings the new vocabulary rows only
========== =====================================================================================================

The frozen-base methods (lora, experts, embeddings) also freeze the routing bias (``bias_update_speed`` = 0), so the
old experts are chosen as before unless a new expert wins. Accuracies are greedy exact match on held-out problems
(``minimoe.rl.trainer.evaluate_policy``), the same held-out additions in both scripts.
"""

from __future__ import annotations

import copy
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from minimoe.adapt import (add_experts, add_lora, extend_tokenizer, extend_vocabulary, freeze_rows, n_trainable,
                           rebuild, replay_rows)
from minimoe.forking import fork_map
from minimoe.history import History
from minimoe.model import Transformer
from minimoe.optim import STEP_METRICS, make_optimizer, training_step
from minimoe.rl.demo import (MAX_NEW_TOKENS, TEMPLATE, addition_task, addition_trace, load_sft_policy,
                             sft_examples)
from minimoe.rl.trainer import evaluate_policy
from minimoe.tasks.chinese import CHINESE_CHARS, DIGITS, ChineseAdditionTask
from minimoe.tasks.sequences import IGNORE_INDEX
from minimoe.tasks.template import format_completion, format_prompt
from minimoe.tasks.tokenizer import CharTokenizer

LOCAL_MAX_NEW_TOKENS = MAX_NEW_TOKENS + 16  # the local thought first writes the question in digits (8 characters)
METHODS = ("full", "replay", "lora", "experts", "embeddings")
MAPPED = {**{d: str(i) for i, d in enumerate(DIGITS)}, "兩": "2", "加": "+", "是": "=", "係": "=", "？": "?"}
"""The old token a new character starts from (``extend_vocabulary(init="mapped")``); the others start at the mean."""


@dataclass
class LocaliseConfig:
    """Settings of one adaptation run; ``steps``, ``batch_size`` and the data are the same for every method."""

    steps: int = 150
    """Optimizer steps (one batch each): the budget every method gets."""
    batch_size: int = 32
    """Sequences per batch."""
    lr: dict[str, float] = field(default_factory=lambda: {"full": 3e-3, "replay": 3e-3, "lora": 1e-2,
                                                          "experts": 1e-2, "embeddings": 3e-2})
    """Peak learning rate per method (low-rank and small parameter sets take larger steps, as in Hu et al. 2021 §5)."""
    warmup: int = 5
    """Linear warm-up steps, then a cosine decay to ``min_lr_ratio · lr``."""
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    replay_fraction: float = 0.25
    """Share of each replay batch drawn from the original data."""
    lora_rank: int = 4
    lora_alpha: float = 8.0
    n_new_experts: int = 2
    """New routed experts per MoE layer (a multiple of the experts per group)."""
    slip_prob: float = 0.6
    """The teacher's carry-slip probability in the original (replayed) examples: chapter 7's."""
    local_slip_prob: float = 0.0
    """The teacher's carry-slip probability in the local examples: 0, a clean new corpus."""
    n_examples: int = 4000
    """Training examples per script."""
    eval_n: int = 100
    """Held-out problems per accuracy."""
    seed: int = 0


@dataclass
class _StepSettings:
    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float
    grad_clip: float | None


def local_task() -> ChineseAdditionTask:
    """The local task: three-digit additions in Chinese, digits 1–9 (``ChineseAdditionTask(zero_digits=False)``)."""
    return ChineseAdditionTask(zero_digits=False)


def local_tokenizer() -> CharTokenizer:
    """Chapter 7's tokenizer with the characters of the Chinese task appended (old ids unchanged)."""
    return extend_tokenizer(CharTokenizer(), CHINESE_CHARS)


def start_model() -> tuple[Transformer, CharTokenizer]:
    """Chapter 7's SFT policy with the extended vocabulary (new rows mapped), and its tokenizer."""
    old, tokenizer = CharTokenizer(), local_tokenizer()
    new_chars = tokenizer.chars[len(old.chars):]
    sources = [old.encode(MAPPED[c]) if c in MAPPED else [] for c in new_chars]
    return extend_vocabulary(load_sft_policy(), len(new_chars), init="mapped", sources=sources), tokenizer


def accuracies(model: nn.Module, tokenizer: CharTokenizer, n: int) -> dict[str, float]:
    """Held-out greedy exact match on the local (Chinese) and the original (digits) additions."""
    return {"local": evaluate_policy(model, tokenizer, local_task(), template=TEMPLATE, n=n,
                                     max_new_tokens=LOCAL_MAX_NEW_TOKENS)["accuracy"],
            "original": evaluate_policy(model, tokenizer, addition_task(), template=TEMPLATE, n=n,
                                        max_new_tokens=MAX_NEW_TOKENS)["accuracy"]}


def prepare(method: str, model: Transformer, cfg: LocaliseConfig,
            n_old_vocab: int) -> tuple[Transformer, dict[str, int], list]:
    """Make the extended start model trainable the way `method` trains. Returns the model to train, its
    frozen-row counts by parameter name (for ``n_trainable``) and the ``freeze_rows`` hooks (to remove after)."""
    if method not in METHODS:
        raise ValueError(f"method ({method!r}) must be one of {METHODS}")
    if method in ("full", "replay"):
        return model.requires_grad_(True), {}, []
    frozen_rows, hooks = {"embed.weight": n_old_vocab}, []
    if method == "experts":
        n_old = model.cfg.n_routed_experts
        model = add_experts(model, cfg.n_new_experts, bias_update_speed=0.0).requires_grad_(False)
        for name, p in model.named_parameters():
            if ".ffn.experts." in name and int(name.split(".ffn.experts.")[1].split(".")[0]) >= n_old:
                p.requires_grad_(True)  # a new expert
            elif name.endswith("ffn.router.weight"):
                hooks.append(freeze_rows(p, n_old))  # only the new experts' router rows learn
                frozen_rows[name] = n_old
    else:
        model = rebuild(model, bias_update_speed=0.0).requires_grad_(False)
        if method == "lora":
            add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    hooks.append(freeze_rows(model.embed.weight, n_old_vocab))
    if not model.cfg.tie_word_embeddings:
        hooks.append(freeze_rows(model.head.weight, n_old_vocab))
        frozen_rows["head.weight"] = n_old_vocab
    return model, frozen_rows, hooks


@dataclass
class Data:
    """Training examples of both scripts, padded to one width. Shapes: inputs, targets (N, L) long each."""

    local_inputs: torch.Tensor
    local_targets: torch.Tensor
    original_inputs: torch.Tensor
    original_targets: torch.Tensor


def local_examples(tokenizer: CharTokenizer, n: int, slip_prob: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's worked solutions of `n` local training problems: the thought first writes the question in
    digits, then adds as in chapter 7: 「三百四十七加二百八十五是多少？」 → ``<think>347+285=7+5+0=12,…</think>``.

    Shapes: -> inputs (n, L), targets (n, L); targets are IGNORE_INDEX on the prompt and the padding.
    """
    rng = random.Random(seed)
    rows, starts = [], []
    for p in local_task().sample(n, "train", seed=seed):
        think, answer = addition_trace(p.a, p.b, slip_prob, rng)
        prompt = tokenizer.encode(format_prompt(p.question, TEMPLATE), add_bos=True)
        rows.append(prompt + tokenizer.encode(format_completion(p.original.question + think, answer), add_eos=True))
        starts.append(len(prompt))
    width = max(len(r) for r in rows)
    sequences = torch.full((n, width), tokenizer.pad_id, dtype=torch.long)  # (n, L + 1)
    targets = torch.full((n, width - 1), IGNORE_INDEX, dtype=torch.long)  # (n, L)
    for i, (row, n_prompt) in enumerate(zip(rows, starts)):
        sequences[i, :len(row)] = torch.tensor(row)
        targets[i, n_prompt - 1:len(row) - 1] = sequences[i, n_prompt:len(row)]
    return sequences[:, :-1], targets


def training_data(tokenizer: CharTokenizer, cfg: LocaliseConfig) -> Data:
    """The sloppy teacher's worked solutions for Chinese and for digit questions (train split only)."""
    local = local_examples(tokenizer, cfg.n_examples, cfg.local_slip_prob, cfg.seed)
    original = sft_examples(tokenizer, cfg.n_examples, cfg.slip_prob, cfg.seed + 1)
    width = max(local[0].shape[1], original[0].shape[1])

    def pad(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # (N, width)

    return Data(pad(local[0], tokenizer.pad_id), pad(local[1], IGNORE_INDEX), pad(original[0], tokenizer.pad_id),
                pad(original[1], IGNORE_INDEX))


@dataclass
class RunResult:
    """One method, one seed: held-out accuracies (fractions), parameters trained, CPU seconds of training."""

    method: str
    seed: int
    local: float
    original: float
    params_trained: int
    cpu_seconds: float
    history: History
    model: nn.Module


def adapt(method: str, cfg: LocaliseConfig, seed: int, start: tuple[Transformer, CharTokenizer] | None = None,
          data: Data | None = None) -> RunResult:
    """Train a copy of the start model with `method` for ``cfg.steps`` steps; evaluate it on both scripts."""
    base, tokenizer = start or start_model()
    data = data or training_data(tokenizer, cfg)
    torch.manual_seed(seed)  # LoRA's A and the new experts are drawn from it
    model, frozen_rows, hooks = prepare(method, copy.deepcopy(base), cfg, CharTokenizer().vocab_size)
    model.train()
    optimizer = make_optimizer(model, cfg.lr[method], weight_decay=0.0)  # no decay: frozen rows stay put
    steps = _StepSettings(cfg.lr[method], cfg.warmup, cfg.steps, cfg.min_lr_ratio, cfg.grad_clip)
    generator = torch.Generator().manual_seed(seed)
    fraction = cfg.replay_fraction if method == "replay" else 0.0
    history = History(step=[], lm_loss=[], **{name: [] for name in STEP_METRICS})
    cpu = time.process_time()
    for step in range(cfg.steps):
        local, original = replay_rows(len(data.local_inputs), len(data.original_inputs), cfg.batch_size, fraction,
                                      generator)
        inputs = torch.cat([data.local_inputs[local], data.original_inputs[original]])  # (B, L)
        targets = torch.cat([data.local_targets[local], data.original_targets[original]])  # (B, L)
        out = model(inputs)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten(),
                                                 ignore_index=IGNORE_INDEX)
        record = training_step(model, optimizer, loss, out, step=step, cfg=steps, hint=f"method {method}")
        history.record(step=step, lm_loss=loss.item(), **record)
    cpu = time.process_time() - cpu
    for hook in hooks:
        hook.remove()
    model.eval()
    acc = accuracies(model, tokenizer, cfg.eval_n)
    return RunResult(method, seed, acc["local"], acc["original"], n_trainable(model, frozen_rows), cpu, history,
                     model)


def compare(methods: tuple[str, ...] = METHODS, seeds: tuple[int, ...] = (0, 1, 2),
            cfg: LocaliseConfig | None = None, *, workers: int = 1, progress: bool = False) -> dict:
    """Every method on every seed from one start model and one data set: ``{"start": accuracies, "runs":
    [RunResult, …], "config": asdict(cfg)}``. Each run is seeded on its own, so ``workers`` (processes, forked on
    Linux, ``minimoe.forking``) changes only the wall time, never a number."""
    cfg = cfg or LocaliseConfig()
    start = start_model()
    data = training_data(start[1], cfg)

    def run(job: tuple[str, int]) -> RunResult:
        torch.set_num_threads(1)  # here too, so that every run has the one thread a forked worker has
        return adapt(job[0], cfg, job[1], start, data)

    runs = fork_map(run, [(method, seed) for method in methods for seed in seeds], workers)
    if progress:
        for r in runs:
            print(f"{r.method:>10} seed {r.seed}: local {r.local:.0%}, original {r.original:.0%}, "
                  f"{r.params_trained:,} params, {r.cpu_seconds:.1f} CPU s", flush=True)
    return {"start": accuracies(start[0].eval(), start[1], cfg.eval_n), "runs": runs, "config": asdict(cfg)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """Per method: (mean, sd) over seeds of local and original accuracy, params trained and CPU seconds."""
    table = {}
    for method in dict.fromkeys(r.method for r in results["runs"]):
        runs = [r for r in results["runs"] if r.method == method]
        table[method] = {key: mean_sd([float(getattr(r, key)) for r in runs])
                         for key in ("local", "original", "params_trained", "cpu_seconds")}
    return table


def summary_line(results: dict) -> str:
    """``local/original accuracy: full L%/O%, replay L%/O%, lora L%/O%, experts L%/O%, start -/O%``."""
    table = summary(results)
    parts = [f"{m} {table[m]['local'][0]:.0%}/{table[m]['original'][0]:.0%}"
             for m in ("full", "replay", "lora", "experts") if m in table]
    return f"local/original accuracy: {', '.join(parts)}, start -/{results['start']['original']:.0%}"
