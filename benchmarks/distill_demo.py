"""Distillation vs RL on a small model, in miniature: R1 Table 6 on three-digit addition, paired over seeds.

DeepSeek-R1 §4.1, Table 6: large-scale RL on Qwen-32B-Base (DeepSeek-R1-Zero-Qwen-32B) reaches 47.0 pass@1 on
AIME 2024, while the same base fine-tuned on R1's 800k SFT samples (DeepSeek-R1-Distill-Qwen-32B, DeepSeek-R1 §2.4)
reaches 72.6; of those samples about 600k are reasoning traces rejection-sampled from R1's intermediate RL
checkpoint and about 200k non-reasoning samples from DeepSeek-V3's pipeline (DeepSeek-R1 §2.3.3).

The experiment is ``minimoe.distill_arms`` (its docstring says what each arm does and why the RL arm has its own
learning rate): one teacher, then per seed a student base and three arms from copies of it, (a) GRPO on the
student, (b) SFT on the teacher's filtered traces, (c) logit distillation, at about the same CPU cost. Chapter 8
runs the same ``run_seed`` with the same ``ArmsConfig`` on seed 0, so its numbers are this benchmark's seed-0 line.
The arms of one seed share their base, so the comparison is paired: the script prints, for each pair of arms, the
mean per-seed difference with its 95% t-interval, and where the interval holds 0, the smallest difference the
design would detect (80% power, two-sided 5% test, from the observed spread). It also prints whether the RL arm ever
ended below its own starting accuracy.

Run: ``python benchmarks/distill_demo.py`` (8 seeds, ≈ 1 CPU min each plus the teacher's ≈ 0.5; ``--jobs 2`` runs
two seeds at once), ``--seeds 0 1 2``, ``--quick`` (tiny settings for tests). The last line is
``held-out accuracy: teacher T%, student rl R%, student traces S%, student logits L%`` (means over seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations

import torch

from minimoe.accounting import count_params
from minimoe.distill import cpu_seconds, student_config
from minimoe.distill_arms import ARMS, ArmsConfig, paired_difference, run_seed, t_quantile, train_teacher
from minimoe.rl import demo
from minimoe.tasks.tokenizer import CharTokenizer

QUICK = ArmsConfig(teacher_steps=2, student_sft_steps=40, trace_prompts=16, trace_samples=2, rl_steps=3, sft_steps=5,
                   kd_steps=5, eval_n=20)
POWER_Z = 0.8416  # the standard normal's 0.8 quantile: 80% power


def _seed(args: tuple) -> dict:
    """One seed in a worker process: the numbers only (no models), so that they cross the process boundary."""
    teacher, seed, cfg, threads = args
    torch.set_num_threads(threads)
    r = run_seed(teacher, seed, cfg)
    return {"seed": seed, "base": r.base, "base_cpu": r.base_cpu, "kept": r.kept, "sampled": r.sampled,
            "trace_cpu": r.trace_cpu, "accuracy": r.accuracy, "cpu": r.cpu, "steps": r.steps,
            "rl_start_sampled": r.rl_start_sampled}


def mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values]
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}%"


def compare(results: list[dict], a: str, b: str) -> str:
    """'a − b: +d points [lo, hi]' and the verdict, in percentage points over the paired seeds."""
    xs, ys = [r["accuracy"][a] for r in results], [r["accuracy"][b] for r in results]
    mean, half = (100 * v for v in paired_difference(xs, ys))
    line = f"  {a} − {b}: {mean:+.1f} points, 95% CI [{mean - half:+.1f}, {mean + half:+.1f}]"
    if mean - half > 0 or mean + half < 0:
        return line + f": {a if mean > 0 else b} ahead"
    n = len(results)
    sd = 100 * statistics.stdev(x - y for x, y in zip(xs, ys))
    detectable = (t_quantile(0.975, n - 1) + POWER_Z) * sd / n**0.5
    return line + f": no difference detected; {n} seeds detect ±{detectable:.1f} points with 80% power"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="seeds 0 and 1, tiny settings: a smoke test")
    args = parser.parse_args()
    cfg = QUICK if args.quick else ArmsConfig()
    seeds = [0, 1] if args.quick else args.seeds
    torch.set_num_threads(args.threads)
    tokenizer = CharTokenizer()
    n_teacher = count_params(demo.policy_config(tokenizer)).total
    n_student = count_params(student_config(tokenizer.vocab_size)).total
    print(f"task: 3-digit addition; teacher tiny-v3 {n_teacher:,} parameters, student {n_student:,} "
          f"({n_teacher / n_student:.1f}x fewer); seeds {seeds}")
    print("settings: " + ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(cfg).items()))

    teacher, teacher_cpu = cpu_seconds(lambda: train_teacher(cfg))
    teacher_acc = demo.heldout_accuracy(teacher, cfg.eval_n)["accuracy"]
    print(f"teacher: GRPO {cfg.teacher_steps} steps from the shipped SFT policy, {teacher_cpu / 60:.2f} CPU min, "
          f"held-out {teacher_acc:.1%}")
    jobs = [(teacher, seed, cfg, args.threads) for seed in seeds]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(_seed, jobs))
    else:
        results = [_seed(job) for job in jobs]
    for r in results:
        print(f"seed {r['seed']}: student base {r['base']:.1%}; traces kept {r['kept']}/{r['sampled']}; "
              + "; ".join(f"{arm} {r['accuracy'][arm]:.1%} ({r['steps'][arm]} steps, {r['cpu'][arm]:.1f} CPU s)"
                          for arm in ARMS))
    print(f"over {len(results)} seeds, mean ± sd, {cfg.eval_n} held-out problems, greedy exact match:")
    print(f"  student base {mean_sd([r['base'] for r in results])}")
    for arm in ARMS:
        cpu = statistics.mean(r["cpu"][arm] for r in results)
        print(f"  student {arm:6s} {mean_sd([r['accuracy'][arm] for r in results])}, {cpu:.1f} CPU s")
    below = [r for r in results if r["accuracy"]["rl"] < r["base"]]
    print(f"RL ended below its starting accuracy on {len(below)} of {len(results)} seeds" + "".join(
        f"; seed {r['seed']}: {r['base']:.1%} -> {r['accuracy']['rl']:.1%} "
        f"({round((r['base'] - r['accuracy']['rl']) * cfg.eval_n)} of {cfg.eval_n} problems), its samples right "
        f"{r['rl_start_sampled']:.1%} of the time in the first 5 steps" for r in below))
    print("paired differences (same base per seed):")
    for a, b in combinations(ARMS, 2):
        print(compare(results, b, a))
    means = {arm: 100 * statistics.mean(r["accuracy"][arm] for r in results) for arm in ARMS}
    print(f"held-out accuracy: teacher {100 * teacher_acc:.1f}%, student rl {means['rl']:.1f}%, "
          f"student traces {means['traces']:.1f}%, student logits {means['logits']:.1f}%")


if __name__ == "__main__":
    main()
