"""Distillation vs RL on a small model, in miniature: R1 Table 6 on three-digit addition, with error bars over seeds.

DeepSeek-R1 §4.1, Table 6: large-scale RL on Qwen-32B-Base (DeepSeek-R1-Zero-Qwen-32B) reaches 47.0 pass@1 on
AIME 2024, while the same base fine-tuned on R1's 800k SFT samples (DeepSeek-R1-Distill-Qwen-32B, DeepSeek-R1 §2.4)
reaches 72.6; of those samples about 600k are reasoning traces rejection-sampled from R1's intermediate RL
checkpoint and about 200k non-reasoning samples from DeepSeek-V3's pipeline (DeepSeek-R1 §2.3.3). Here, per seed:

1. Teacher: chapter 7's shipped SFT policy (``tiny-v3``) trained with the demo's GRPO recipe (trained once, seed 0).
2. Student base: ``minimoe.distill.student_config`` (same architecture, half the width, ~4× fewer parameters),
   fine-tuned on the sloppy teacher's worked additions exactly as chapter 7's policy was (the "pretrained base").
3. Three copies of the student base, each given the same CPU budget (``--budget`` seconds of this process's CPU):
   (a) GRPO on the student itself (the demo's recipe); (b) R1's recipe: rejection-sample traces from the teacher,
   keep the correct and well-formatted ones, SFT only; (c) logit distillation (``kd_loss``, forward KL, τ = 1) on the
   same teacher-generated traces. The teacher's sampling (and, for (c), its logits) is charged to (b) and (c)'s
   budget; the step counts are calibrated from two probe steps on a throwaway copy (not counted), and the CPU
   minutes reported are those measured for the run itself (plus the teacher's sampling for (b) and (c)).

Run: ``python benchmarks/distill_demo.py`` (3 seeds, ≈ 4 CPU min each), ``--seeds 0 1 2 3 4``, ``--budget 90``,
``--quick`` (tiny settings for tests). The last line is
``held-out accuracy: teacher T%, student rl R%, student traces S%, student logits L%`` (means over seeds).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from tqdm.auto import tqdm

from minimoe.accounting import count_params
from minimoe.distill import (KDConfig, cpu_seconds, distill_logits, rejection_sample, steps_for_budget,
                             student_config)
from minimoe.model import Transformer
from minimoe.rl import demo
from minimoe.tasks.tokenizer import CharTokenizer
from minimoe.train import TrainConfig, train

ARMS = ("rl", "traces", "logits")


def train_teacher(grpo_steps: int) -> torch.nn.Module:
    """Chapter 7's recipe: the shipped SFT policy, then GRPO."""
    teacher = demo.load_sft_policy()
    demo.make_trainer(teacher, steps=grpo_steps, seed=0, progress=False).train()
    return teacher


def student_base(seed: int, sft_steps: int) -> torch.nn.Module:
    """A fresh student, SFT on the sloppy teacher's solutions (``minimoe.rl.demo.sft_examples``), like chapter 7."""
    tokenizer = CharTokenizer()
    inputs, targets = demo.sft_examples(tokenizer, 20000, slip_prob=0.6, seed=seed)
    torch.manual_seed(seed)
    student = Transformer(student_config(tokenizer.vocab_size))
    train(student, lambda step, b, t, g: _rows(inputs, targets, b, g),
          TrainConfig(steps=sft_steps, batch_size=32, seq_len=inputs.shape[1], lr=5e-3, warmup=min(30, sft_steps),
                      seed=seed, progress=False))
    return student


def _rows(inputs, targets, batch, generator):
    rows = torch.randint(0, len(inputs), (batch,), generator=generator)
    return inputs[rows], targets[rows]


def run_rl(student, budget_s: float, seed: int) -> tuple[int, float]:
    """(a) GRPO on the student with the demo's recipe, as many steps as the budget holds."""
    _, probe = cpu_seconds(lambda: demo.make_trainer(copy.deepcopy(student), steps=2, seed=seed,
                                                     progress=False).train())
    steps = steps_for_budget(budget_s, probe / 2)
    _, cpu = cpu_seconds(lambda: demo.make_trainer(student, steps=steps, seed=seed, progress=False).train())
    return steps, cpu


def sample_traces(teacher, n_prompts: int, samples: int, seed: int):
    return rejection_sample(teacher, CharTokenizer(), demo.addition_task(), n_prompts, samples,
                            template=demo.TEMPLATE, max_new_tokens=demo.MAX_NEW_TOKENS, seed=seed)


def run_traces(student, traces, budget_s: float, seed: int) -> tuple[int, float]:
    """(b) R1's recipe: SFT on the teacher's filtered traces."""
    def sft(model, steps):
        return train(model, lambda step, b, t, g: traces.batch(torch.randint(0, len(traces.inputs), (b,), generator=g)),
                     TrainConfig(steps=steps, batch_size=32, seq_len=traces.inputs.shape[1], lr=3e-3,
                                 warmup=min(10, steps), seed=seed, progress=False))
    _, probe = cpu_seconds(lambda: sft(copy.deepcopy(student), 2))
    steps = steps_for_budget(budget_s, probe / 2)
    _, cpu = cpu_seconds(lambda: sft(student, steps))
    return steps, cpu


def run_logits(student, teacher, traces, budget_s: float, seed: int) -> tuple[int, float]:
    """(c) Logit distillation with ``kd_loss`` on the same teacher-generated traces."""
    with torch.no_grad():
        teacher_logits, logits_cpu = cpu_seconds(lambda: teacher.eval()(traces.inputs).logits)  # (N, L, V)
    budget_s -= logits_cpu

    def kd(model, steps):
        return distill_logits(model, teacher_logits, traces, KDConfig(steps=steps, lr=3e-3, warmup=min(10, steps),
                                                               seed=seed, progress=False))
    _, probe = cpu_seconds(lambda: kd(copy.deepcopy(student), 2))
    steps = steps_for_budget(budget_s, probe / 2)
    _, cpu = cpu_seconds(lambda: kd(student, steps))
    return steps, cpu + logits_cpu


def run_seed(seed: int, teacher, args) -> dict:
    base, base_cpu = cpu_seconds(lambda: student_base(seed, args.student_sft_steps))
    result = {"seed": seed, "base_cpu": base_cpu, "base": demo.heldout_accuracy(base, args.eval_n)["accuracy"]}
    traces, trace_cpu = cpu_seconds(lambda: sample_traces(teacher, args.trace_prompts, args.trace_samples, seed))
    result.update(trace_cpu=trace_cpu, kept=len(traces.inputs), sampled=traces.n_sampled)
    for arm in ARMS:
        student = copy.deepcopy(base)
        left = args.budget if arm == "rl" else args.budget - trace_cpu
        if arm == "rl":
            steps, cpu = run_rl(student, left, seed)
        elif arm == "traces":
            steps, cpu = run_traces(student, traces, left, seed)
        else:
            steps, cpu = run_logits(student, teacher, traces, left, seed)
        cpu += 0 if arm == "rl" else trace_cpu
        result[arm] = demo.heldout_accuracy(student, args.eval_n)["accuracy"]
        result[f"{arm}_cpu"], result[f"{arm}_steps"] = cpu, steps
    return result


def mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values]
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=45.0, help="CPU seconds per arm (a), (b), (c)")
    parser.add_argument("--teacher-steps", type=int, default=60, help="GRPO steps of the teacher")
    parser.add_argument("--student-sft-steps", type=int, default=800, help="SFT steps of the student base")
    parser.add_argument("--trace-prompts", type=int, default=128, help="training problems sampled from the teacher")
    parser.add_argument("--trace-samples", type=int, default=4, help="teacher samples per problem")
    parser.add_argument("--eval-n", type=int, default=200, help="held-out problems per evaluation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="seed 0, tiny budgets: a smoke test, not a measurement")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget, args.teacher_steps, args.student_sft_steps = [0], 2.0, 3, 40
        args.trace_prompts, args.trace_samples, args.eval_n = 16, 2, 20
    torch.set_num_threads(args.threads)
    tokenizer = CharTokenizer()
    n_teacher = count_params(demo.policy_config(tokenizer)).total
    n_student = count_params(student_config(tokenizer.vocab_size)).total
    print(f"task: 3-digit addition; teacher tiny-v3 {n_teacher:,} parameters, student {n_student:,} "
          f"({n_teacher / n_student:.1f}x fewer); budget {args.budget:.0f} CPU s per arm; seeds {args.seeds}")

    teacher, teacher_cpu = cpu_seconds(lambda: train_teacher(args.teacher_steps))
    teacher_acc = demo.heldout_accuracy(teacher, args.eval_n)["accuracy"]
    print(f"teacher: GRPO {args.teacher_steps} steps from the shipped SFT policy, {teacher_cpu / 60:.2f} CPU min, "
          f"held-out {teacher_acc:.1%}")
    results = []
    for seed in tqdm(args.seeds, desc="seeds"):
        r = run_seed(seed, teacher, args)
        results.append(r)
        tqdm.write(f"seed {seed}: student base {r['base']:.1%} (SFT {r['base_cpu'] / 60:.2f} CPU min); traces kept "
                   f"{r['kept']}/{r['sampled']} ({r['trace_cpu']:.1f} CPU s); "
                   + "; ".join(f"{arm} {r[arm]:.1%} ({r[arm + '_steps']} steps, {r[arm + '_cpu'] / 60:.2f} CPU min)"
                               for arm in ARMS))
    print(f"over {len(results)} seed(s), mean ± sd, {args.eval_n} held-out problems, greedy exact match:")
    print(f"  student base {mean_sd([r['base'] for r in results])}")
    for arm in ARMS:
        cpu = [r[f"{arm}_cpu"] / 60 for r in results]
        print(f"  student {arm:6s} {mean_sd([r[arm] for r in results])}, CPU min {statistics.mean(cpu):.2f}")
    means = {arm: 100 * statistics.mean(r[arm] for r in results) for arm in ARMS}
    print(f"held-out accuracy: teacher {100 * teacher_acc:.1f}%, student rl {means['rl']:.1f}%, "
          f"student traces {means['traces']:.1f}%, student logits {means['logits']:.1f}%")


if __name__ == "__main__":
    main()
