"""R1-Zero in miniature: held-out exact-match accuracy before and after GRPO, and the minutes each phase took.

Budget (DESIGN.md): from a policy pretrained in at most 3 minutes, GRPO raises held-out exact-match accuracy by at
least 30 points within 5 minutes of CPU time, on 2 cores. Phase 1 (SFT on a sloppy teacher's worked additions) is
re-run from scratch unless ``--from-checkpoint`` starts from the shipped ``minimoe/rl/checkpoints/sft_addition.pt``;
phase 2 is ``minimoe.rl.demo``'s GRPO. Both wall-clock and process CPU minutes are printed: on a shared machine the
wall clock includes other people's work, the CPU time of this single-threaded process does not.

Run: ``python benchmarks/grpo_demo.py`` (≈ 3 min of CPU), ``--from-checkpoint`` (≈ 1.5), ``--quick`` for tests.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from minimoe.rl import demo
from minimoe.train import load_checkpoint

SFT_BUDGET_MIN, GRPO_BUDGET_MIN, GAIN_POINTS = 3.0, 5.0, 30.0
T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """`fn()`, its wall-clock minutes and the process's CPU minutes."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, (time.perf_counter() - wall) / 60, (time.process_time() - cpu) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-checkpoint", action="store_true", help="skip SFT, start from the shipped checkpoint")
    parser.add_argument("--quick", action="store_true", help="from the checkpoint, 6 GRPO steps, 50 problems")
    parser.add_argument("--grpo-steps", type=int, default=60)
    parser.add_argument("--eval-n", type=int, default=200, help="held-out problems per evaluation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, eval_n = (6, 50) if args.quick else (args.grpo_steps, args.eval_n)
    print(f"torch.set_num_threads({args.threads}); task: 3-digit addition; policy: tiny-v3 (MLA + DeepSeekMoE)")

    sft_cpu = 0.0
    if args.from_checkpoint or args.quick:
        policy = load_checkpoint(demo.CHECKPOINT).model
        print(f"phase 1: loaded {demo.CHECKPOINT}")
    else:
        policy, sft_wall, sft_cpu = timed(lambda: demo.pretrain(progress=False))
        print(f"phase 1 SFT: {sft_wall:.2f} min wall, {sft_cpu:.2f} min CPU (budget {SFT_BUDGET_MIN:.0f})")
    before = demo.heldout_accuracy(policy, eval_n)

    history, grpo_wall, grpo_cpu = timed(lambda: demo.make_trainer(policy, steps=steps, progress=False).train())
    after = demo.heldout_accuracy(policy, eval_n)
    print(f"phase 2 GRPO: {steps} steps, {grpo_wall:.2f} min wall, {grpo_cpu:.2f} min CPU "
          f"(budget {GRPO_BUDGET_MIN:.0f})")
    print(f"sampled reward per step: {history.reward[0]:.2f} (first) -> {history.reward[-1]:.2f} (last)")
    gain = 100 * (after["accuracy"] - before["accuracy"])
    print(f"held-out exact match ({eval_n} problems, greedy): before {before['accuracy']:.1%}, "
          f"after {after['accuracy']:.1%}, gain {gain:+.1f} points (target +{GAIN_POINTS:.0f})")
    print(f"format rate: before {before['format_rate']:.0%}, after {after['format_rate']:.0%}")
    if not args.quick:
        within = sft_cpu <= SFT_BUDGET_MIN and grpo_cpu <= GRPO_BUDGET_MIN
        print(f"budget: {'OK' if within and gain >= GAIN_POINTS else 'MISSED'} "
              f"(CPU minutes; wall minutes depend on what else runs on the machine)")


if __name__ == "__main__":
    main()
