"""Teaching chapter 7's policy its additions in Traditional Chinese: local gain against forgetting, five ways.

From chapter 7's shipped SFT policy with an extended vocabulary (new rows mapped: 三 → "3", 加 → "+"), each method
trains for the same number of steps on the same batches of worked solutions to 「三百四十七加二百八十五是多少？」 /
「…係幾多？」 (``minimoe.localise``): full fine-tuning, replay (25% of each batch from the original data), LoRA on
attention and expert projections (Hu et al. 2021), new routed experts (a new expert group, old experts frozen), and the
new vocabulary rows only. It reports, per method and as mean ± sd over seeds, held-out greedy exact match on the local
(Chinese) and the original (digit) additions, the parameters trained and the training CPU seconds.

Target of the issue: one method keeps original accuracy within 5 points of the start model while reaching at least
90% of full fine-tuning's local accuracy. The script prints whether any method does, from the numbers it measured.

Budget: ``--quick`` is exactly what chapter 11 runs (``LocaliseConfig()`` defaults, 3 seeds, 2 worker processes):
15 training runs of 150 steps (≈ 8–10 CPU s each on one thread) plus 32 held-out evaluations, ≈ 2.5 CPU minutes,
about 80 s of wall time on an idle 2-core machine. That is why the chapter needs more than 90 s (Part III allows 3
minutes): fewer steps leave every method at 0% local accuracy, fewer seeds give no error bars. The default run
trains 3× longer (450 steps) and evaluates on 200 problems.

Run: ``python benchmarks/localise_demo.py --quick`` (the chapter's settings), ``python benchmarks/localise_demo.py``
(longer), ``--seeds 0 1 2 3 4``, ``--workers 1``. The last line is
``local/original accuracy: full L%/O%, replay L%/O%, lora L%/O%, experts L%/O%, start -/O%`` (means over seeds).
"""

from __future__ import annotations

import argparse
import time

import torch

from minimoe.localise import METHODS, LocaliseConfig, compare, summary, summary_line


def quick_config() -> LocaliseConfig:
    """Chapter 11's settings."""
    return LocaliseConfig()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="chapter 11's settings (150 steps, 100 problems)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="processes; the numbers do not depend on it")
    args = parser.parse_args(argv)
    if len(args.seeds) < 3:
        parser.error("error bars need at least 3 seeds")
    torch.set_num_threads(1)
    cfg = quick_config() if args.quick else LocaliseConfig(steps=450, eval_n=200)
    wall = time.perf_counter()
    results = compare(METHODS, tuple(args.seeds), cfg, workers=args.workers, progress=True)
    wall = time.perf_counter() - wall
    table = summary(results)
    start = results["start"]
    print(f"\nstart: local {start['local']:.0%}, original {start['original']:.0%}; {cfg.steps} steps of "
          f"{cfg.batch_size}, seeds {args.seeds}, {wall / 60:.1f} min wall")
    print(f"{'method':>10} | {'local':>11} | {'original':>11} | {'params':>8} | CPU s/run")
    for method, row in table.items():
        (lo, lo_sd), (orig, orig_sd) = row["local"], row["original"]
        print(f"{method:>10} | {lo:5.1%} ±{lo_sd:4.1%} | {orig:5.1%} ±{orig_sd:4.1%} | "
              f"{int(row['params_trained'][0]):>8,} | {row['cpu_seconds'][0]:.1f}")
    full_local = table["full"]["local"][0]
    meeting = [m for m, row in table.items() if m != "full" and row["original"][0] >= start["original"] - 0.05
               and full_local > 0 and row["local"][0] >= 0.9 * full_local]
    print(f"target (original within 5 points of {start['original']:.0%}, local >= 90% of full's "
          f"{full_local:.0%}): {'met by ' + ', '.join(meeting) if meeting else 'not met by any method'}")
    print(summary_line(results))


if __name__ == "__main__":
    main()
