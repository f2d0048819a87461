"""Assignment 3, Part 6: how far a correct loss clears the training test's threshold, over many seeds.

The training item of `assignments/judge/a3_grpo.py` (Part 6) loads the shipped SFT checkpoint, runs
``minimoe.rl.demo.make_trainer(policy, loss_fn=<the student's grpo_loss>, **TRAIN_SETTINGS, seed=s)`` in the judge
with a seed derived from the grading seed, and requires greedy held-out exact match on ``EVAL_N`` problems to rise by at least
``THRESHOLD`` (a run that falls short is repeated once with another seed). A correct loss must fail that with
probability below 1e-4, so this script trains the reference loss
(``minimoe.rl.grpo.grpo_loss``) over ``--seeds`` seeds and prints the gains' min / mean / max and the margin between
their mean and the threshold in standard deviations (a normal tail beyond 3.7 standard deviations is 1e-4). It also
trains a few wrong losses and prints their gains, to show honestly what the training test does and does not catch:
a sign error does not train; a wrong aggregation (``"grpo"`` where ``"dapo"`` is asked) or a loss that ignores the
mask still trains, which is why Part 3's tests, not Part 6, check those.

Keep ``TEST_SETTINGS``, ``EVAL_N`` and ``THRESHOLD`` equal to the judge's ``TRAIN_SETTINGS``, ``EVAL_N`` and
``THRESHOLD`` (points of 100).

Run: ``python benchmarks/a3_training_sweep.py`` (200 seeds and 20 per wrong loss: about 12 minutes of one CPU core),
``--seeds 20 --variant-seeds 3`` for a quick look.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from tqdm.auto import tqdm

from minimoe.rl import demo
from minimoe.rl.grpo import grpo_loss

TEST_SETTINGS = {"steps": 4}  # on top of minimoe.rl.demo.grpo_settings() (dapo, clip 0.2/0.28, 8 prompts x 8, lr 3e-4)
EVAL_N = 100
THRESHOLD = 0.10


def sign_error(*args, **kwargs):
    """Ascends the loss instead of descending it."""
    loss, stats = grpo_loss(*args, **kwargs)
    return -loss, stats


def grpo_aggregation(*args, **kwargs):
    """Always aggregates as "grpo" (per-completion mean, then mean), whatever loss_type asks for."""
    return grpo_loss(*args, **{**kwargs, "loss_type": "grpo"})


def unmasked(logprobs, old_logprobs, advantages, mask, **kwargs):
    """Counts every position, padding after the end of a completion included."""
    return grpo_loss(logprobs, old_logprobs, advantages, torch.ones_like(mask), **kwargs)


VARIANTS = {"sign error": sign_error, "grpo aggregation instead of dapo": grpo_aggregation,
            "mask ignored": unmasked}


def gain(loss_fn, seed: int, before: float) -> float:
    """Held-out accuracy gain of the shipped SFT policy after the test's GRPO run with `loss_fn` and `seed`."""
    policy = demo.load_sft_policy()
    demo.make_trainer(policy, loss_fn=loss_fn, seed=seed, progress=False, **TEST_SETTINGS).train()
    return demo.heldout_accuracy(policy, EVAL_N)["accuracy"] - before


def sweep(name: str, loss_fn, seeds: range, before: float) -> list[float]:
    gains = [gain(loss_fn, s, before) for s in tqdm(seeds, desc=name, leave=False)]
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="seeds of the reference loss")
    parser.add_argument("--variant-seeds", type=int, default=20, help="seeds of each wrong loss (0: skip them)")
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matrices: one thread is the fastest, as in the notebook

    before = demo.heldout_accuracy(demo.load_sft_policy(), EVAL_N)["accuracy"]
    print(f"settings {TEST_SETTINGS} on demo.grpo_settings(); held-out accuracy before: {before:.0%} on {EVAL_N} "
          f"problems; threshold: gain >= {THRESHOLD:+.0%}")
    cpu = time.process_time()
    gains = sweep("reference", None, range(args.first_seed, args.first_seed + args.seeds), before)
    per_run = (time.process_time() - cpu) / max(1, args.seeds)
    mean = statistics.mean(gains)
    sd = statistics.stdev(gains) if len(gains) > 1 else float("nan")
    failures = sum(g < THRESHOLD for g in gains)
    print(f"reference loss, {len(gains)} seeds: gain min {min(gains):+.0%}, mean {mean:+.1%}, max {max(gains):+.0%}, "
          f"sd {sd:.1%}; {failures} below the threshold; mean - threshold = {(mean - THRESHOLD) / sd:.1f} sd, "
          f"min - threshold = {(min(gains) - THRESHOLD) / sd:.1f} sd; {per_run:.2f} s CPU per run")
    print("lowest gains: " + ", ".join(f"{g:+.0%}" for g in sorted(gains)[:5]))
    # The judge repeats a run that falls short once, with an independent seed: a correct loss fails only when
    # both runs fall short. With k of n runs short, one run fails with probability about k/n, at most (k+3)/n at
    # 95% confidence when k = 0 (the rule of three); the test fails with about the square of that.
    bound = (failures + 3) / len(gains) if failures == 0 else failures / len(gains)
    normal = statistics.NormalDist(mean, sd).cdf(THRESHOLD) if len(gains) > 1 else float("nan")
    print(f"with one repeat: a correct loss fails with probability ~{(failures / len(gains)) ** 2:.1e} "
          f"({failures} of {len(gains)} short); below {bound ** 2:.1e} by the rule of three; "
          f"{normal ** 2:.1e} under a normal fit")
    for name, fn in VARIANTS.items() if args.variant_seeds else ():
        wrong = sweep(name, fn, range(args.first_seed, args.first_seed + args.variant_seeds), before)
        passed = sum(g >= THRESHOLD for g in wrong)
        print(f"{name}, {len(wrong)} seeds: gain min {min(wrong):+.0%}, mean {statistics.mean(wrong):+.1%}, "
              f"max {max(wrong):+.0%}; passes the threshold in {passed} of {len(wrong)}")


if __name__ == "__main__":
    main()
