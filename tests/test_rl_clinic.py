"""minimoe.rl.clinic: chapter 12's failure clinic, its rewards, token weights, first step and cases."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _rl import _policy
from minimoe.history import History
from minimoe.rl import accuracy_reward, group_advantages
from minimoe.rl.clinic import CASES, Clinic, first_last, first_step, majority_reward, make_reward, make_task, token_weights

ROOT = Path(__file__).resolve().parents[1]


def test_majority_reward_rewards_agreement_not_correctness():
    from minimoe.tasks import ArithmeticProblem

    right, wrong = ArithmeticProblem(347, 285, "+"), ArithmeticProblem(100, 200, "+")
    done = "<think>x</think><answer>{}</answer>"
    completions = [done.format(a) for a in ("622", "622", "632", "no")] + [done.format(a) for a in ("300", "301")]
    problems = [right] * 4 + [wrong] * 2
    assert majority_reward(completions, problems).tolist() == [1, 1, 0, 0, 1, 0]  # tie: the first answer seen
    assert accuracy_reward(completions, problems).tolist() == [0, 0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="one entry per completion"):
        majority_reward(completions, problems[:2])


def test_clinic_settings_are_validated():
    with pytest.raises(ValueError, match="reward must be one of"):
        make_reward("lenient")
    with pytest.raises(ValueError, match="task must be one of"):
        make_task("countdown")
    assert make_task("harder").max_digits == 4 and make_reward("strict").terms[0][0] is accuracy_reward
    for name, case in CASES.items():
        assert set(case) == {"failure", "fix", "watch"} and case["failure"] != case["fix"], name
    with pytest.raises(ValueError, match="unknown case"):
        Clinic(sft=_policy()).case("overfitting")


def test_token_weights_are_the_gradient_of_grpo_loss():
    lengths, rewards = [2, 6, 2, 6], [1.0, 1.0, 0.0, 0.0]
    advantages = group_advantages(torch.tensor(rewards), 4)
    grpo = token_weights(lengths, rewards, "grpo", max_completion_length=8)
    torch.testing.assert_close(grpo, advantages / (4 * torch.tensor(lengths, dtype=torch.float32)))
    dr = token_weights(lengths, rewards, "dr_grpo", max_completion_length=8)
    torch.testing.assert_close(dr, group_advantages(torch.tensor(rewards), 4, "none") / (4 * 8))
    assert grpo[2] / grpo[3] == pytest.approx(3.0) and dr[2] == dr[3]  # the long wrong answer is pushed 3× less


def test_first_last_skips_missing_values_and_reads_the_last_moe_layer():
    history = History(step=[0, 1, 2], a=[1.0, None, 3.0], max_vio=[[9.0, 0.5], [9.0, float("nan")], [9.0, 1.5]])
    assert first_last(history, "a", window=1) == (1.0, 3.0)
    assert first_last(history, "max_vio", window=1) == (0.5, 1.5)
    assert first_last(history, "missing") is None


def test_first_step_loss_is_zero_but_its_gradient_is_not():
    anatomy = first_step()
    assert abs(anatomy["loss"]) < 1e-3 and anatomy["grad_norm"] > 1e-2
    assert anatomy["group_sums"].abs().max() < 1e-2 and anatomy["ratio"] == pytest.approx(1.0)


def test_clinic_trains_each_setting_once_and_can_switch_balancing_off():
    clinic = Clinic(steps=1, eval_every=1, eval_n=8)
    run = clinic.run(balancing=False)
    assert clinic.run(balancing=False) is run and len(clinic.runs) == 1
    assert run.policy.cfg.bias_update_speed == 0 and clinic.sft.cfg.bias_update_speed > 0
    assert len(run.history) == 1 and run.settings["balancing"] is False and run.cpu_seconds > 0
    assert 0 <= run.before["accuracy"] <= 1 and run.history.eval_accuracy == [run.after["accuracy"]]


@pytest.mark.slow
def test_benchmark_quick():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grpo_clinic.py"), "--quick"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert "first step: loss" in result.stdout and "distinct runs" in result.stdout
    for name in CASES:
        assert f"{name}: failure" in result.stdout


def test_probe_expert_load_is_the_load_of_one_fixed_batch():
    from minimoe.rl.clinic import probe_expert_load
    from minimoe.rl.demo import load_sft_policy

    policy = load_sft_policy().train()
    loads = probe_expert_load(policy, n=16)
    assert policy.training and len(loads) == 1 and loads[0].shape == (policy.cfg.n_routed_experts,)
    assert loads[0].sum().item() == pytest.approx(1.0) and torch.equal(loads[0], probe_expert_load(policy, n=16)[0])


def test_prepare_in_two_processes_gives_the_numbers_of_one():
    """``Clinic.prepare(workers=2)`` trains in forked processes; every run is seeded, so the histories and
    measurements equal those of training the same settings one after the other in this process."""
    sft = _policy()
    one, two = Clinic(sft, steps=1, eval_every=1, eval_n=8), Clinic(sft, steps=1, eval_every=1, eval_n=8)
    cases = ["reward hacking", "routing collapse"]  # three distinct settings: majority, healthy, balancing off
    one.prepare(cases, workers=1)
    two.prepare(cases, workers=2)
    assert one.runs.keys() == two.runs.keys() and len(one.runs) == 3
    for key, run in one.runs.items():
        other = two.runs[key]
        assert run.before == other.before and run.after == other.after
        timed = {"seconds"}  # wall time per step: the one column that differs from run to run
        assert {k: v for k, v in run.history.columns.items() if k not in timed} == \
            {k: v for k, v in other.history.columns.items() if k not in timed}
    with pytest.raises(ValueError, match="workers"):
        one.prepare(workers=0)
    with pytest.raises(ValueError, match="unknown case"):
        one.prepare(["overfitting"])
