"""The GRPO failure clinic (chapter 12): each failure reproduced from the shipped SFT policy, its diagnostic, its fix.

Every case of ``minimoe.rl.clinic.CASES`` is a failing run and a fixed run of ``CLINIC_STEPS`` (30) GRPO steps on
the R1-Zero demo, differing only in the settings the case lists; ``Clinic`` trains each distinct setting once, so the
healthy run (the demo's settings) serves as the fix of several cases. The script prints, per case, the columns of the
trainer's history that reveal the failure, and the greedy held-out exact match before and after, for both runs;
before that, the anatomy of the first step (the loss is ~0 because the advantages sum to zero in every group) and the
per-token weights of "grpo" and "dr_grpo" on a group of unequal lengths (the length bias, computed, not trained).

Budget and why. Each run takes 10-25 s of one CPU core (``time.process_time``, printed per run), under the issue's
30 CPU s per reproduction; chapter 12 runs the same nine distinct settings through the same ``Clinic`` calls, about
2-2.5 CPU minutes in all (in two processes: about 1.5-2 minutes on two cores), so the chapter is a Part V
chapter that may take up to 3 minutes: seven failures, each a
pair of runs long enough for its diagnostic to move (fewer steps leave the held-out accuracy of the healthy run
still climbing, and the failures of reward hacking and of routing still small).

What does not reproduce in miniature, and the chapter says so: the length bias (the SFT policy writes one
fixed layout, every completion 62-63 tokens, so lengths cannot drift; the mechanism is shown by ``token_weights``)
and routing collapse (thirty steps at a healthy learning rate move the routing bias by at most 30·γ = 0.03; the
probe batch's MaxVio is the same with and without the bias update). Clip-higher changes little in thirty steps.

Run: ``python benchmarks/grpo_clinic.py`` (≈ 2.5 CPU min, in two processes as chapter 12: ``--workers``), ``--seed 1`` for another seed, ``--quick`` (2 steps,
for tests: the numbers then show nothing).
"""

from __future__ import annotations

import argparse

import torch

from minimoe.moe.balance import max_violation
from minimoe.rl.clinic import (CASES, CLINIC_STEPS, Clinic, ClinicRun, first_last, first_step, probe_expert_load,
                               token_weights)


def describe(label: str, run: ClinicRun, columns: tuple[str, ...]) -> str:
    """One line: held-out accuracy before -> after, then each watched column, first five steps -> last five."""
    spans = {c: first_last(run.history, c) for c in columns}
    watched = ", ".join(f"{c} " + ("n/a" if span is None else f"{span[0]:.3f} -> {span[1]:.3f}")
                        for c, span in spans.items())
    return (f"  {label:8s} held-out {run.before['accuracy']:.1%} -> {run.after['accuracy']:.1%}; {watched} "
            f"[{run.cpu_seconds:.1f} CPU s]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 steps per run (tests)")
    parser.add_argument("--workers", type=int, default=2,
                        help="processes that train the runs (as chapter 12: 2); the numbers do not depend on it")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 2 if args.quick else CLINIC_STEPS

    anatomy = first_step(seed=args.seed)
    print(f"first step: loss {anatomy['loss']:.2e}, largest |sum of advantages| of a group "
          f"{anatomy['group_sums'].abs().max():.1e}, gradient norm {anatomy['grad_norm']:.3f} (the loss is ~0, "
          "its gradient is not)")
    for loss_type in ("grpo", "dr_grpo"):
        weights = token_weights([20, 60, 20, 60], [1.0, 1.0, 0.0, 0.0], loss_type, max_completion_length=64)
        print(f"per-token weight, {loss_type:7s} (right 20, right 60, wrong 20, wrong 60 tokens): "
              + ", ".join(f"{w:+.4f}" for w in weights.tolist()))

    clinic = Clinic(steps=steps, seed=args.seed, eval_every=steps)
    clinic.prepare(workers=args.workers)
    for name, case in CASES.items():
        failure, fix = clinic.case(name)
        print(f"{name}: failure {case['failure']}, fix {case['fix'] or 'the demo settings'}")
        print(describe("failure", failure, case['watch']))
        print(describe("fix", fix, case['watch']))
        if "max_vio" in case["watch"]:
            vio = [max_violation(probe_expert_load(policy)[-1]).item() for policy in (clinic.sft, failure.policy,
                                                                                     fix.policy)]
            print("  MaxVio on the probe batch: SFT {:.3f}, failure {:.3f}, fix {:.3f}".format(*vio))
    total = sum(run.cpu_seconds for run in clinic.runs.values())
    print(f"{len(clinic.runs)} distinct runs, {total:.0f} CPU s of training in all "
          f"(longest {max(run.cpu_seconds for run in clinic.runs.values()):.1f} s)")


if __name__ == "__main__":
    main()
