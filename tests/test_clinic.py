"""The GRPO failure clinic (chapter 12): what the trainer's history records, the dashboard, the clinic's cases."""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.history import History
from minimoe.model import Transformer
from minimoe.rl import accuracy_reward, combine_rewards, format_reward, group_advantages
from minimoe.rl.clinic import CASES, Clinic, first_last, first_step, majority_reward, make_reward, make_task, token_weights
from minimoe.rl.rollout import Rollout
from minimoe.rl.trainer import GRPO_METRICS, GRPOConfig, GRPOTrainer, _length_split, reward_term_column
from minimoe.tasks import ArithmeticTask, CharTokenizer
from minimoe.viz_rl import DASHBOARD_PANELS, plot_grpo_dashboard

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]
TOK = CharTokenizer()


def _policy(seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset("tiny-v3", vocab_size=TOK.vocab_size, max_position_embeddings=96,
                                               **changes))


def _trainer(reward_fn, **changes):
    cfg = GRPOConfig(**{**dict(group_size=4, prompts_per_step=3, steps=2, max_new_tokens=6, template="{question}",
                               progress=False, num_iterations=2), **changes})
    return GRPOTrainer(_policy(), TOK, ArithmeticTask(max_digits=1), reward_fn, cfg)


class Recorder:
    """A reward function that returns fixed rewards and keeps what it was asked to score."""

    def __init__(self, rewards, name="recorded"):
        self.rewards, self.calls, self.__name__ = torch.tensor(rewards, dtype=torch.float32), [], name

    def __call__(self, completions, problems):
        self.calls.append((list(completions), list(problems)))
        return self.rewards


# ---------------------------------------------------------------- what the history records

def test_history_has_every_column_a_practitioner_watches():
    for name in ("reward", "accuracy", "zero_std_groups", "clip_fraction", "clip_low", "clip_high", "entropy",
                 "response_length", "length_correct", "length_wrong", "truncated_rate", "kl", "expert_load",
                 "max_vio", "grpo_loss", "grad_norm"):
        assert name in GRPO_METRICS


def test_zero_std_groups_counts_groups_of_equal_rewards():
    # Three groups of four: all equal (1s), all equal (0.1s: a float32 std of ~1e-8, not 0), varied.
    recorder = Recorder([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0, 1, 0, 1])
    metrics = _trainer(recorder).train_step()
    assert metrics["zero_std_groups"] == pytest.approx(2 / 3)
    assert metrics["groups_kept"] == 1.0  # without dynamic sampling every group is trained on (with Â = 0)
    dynamic = _trainer(recorder, dynamic_sampling=True, max_sampling_rounds=2).train_step()
    assert dynamic["zero_std_groups"] == pytest.approx(2 / 3) and dynamic["groups_kept"] == pytest.approx(1 / 3)


def test_reward_terms_are_recorded_unweighted_under_their_own_columns():
    accuracy = Recorder([1, 0, 0, 0] * 3, "accuracy_term")
    style = Recorder([0, 1, 1, 1] * 3, "style_term")
    trainer = _trainer(combine_rewards([(accuracy, 1.0), (style, 0.5)]))
    metrics = trainer.train_step()
    assert reward_term_column(accuracy) == "reward_accuracy_term"
    assert metrics["reward_accuracy_term"] == pytest.approx(0.25) and metrics["reward_style_term"] == pytest.approx(0.75)
    assert metrics["reward"] == pytest.approx(0.25 + 0.5 * 0.75)
    assert trainer.history.reward_style_term == [pytest.approx(0.75)]
    plain = _trainer(Recorder([0, 1] * 6)).train_step()  # a plain reward function has no terms
    assert not any(name.startswith("reward_") for name in plain)


def test_lengths_of_right_and_wrong_samples_and_truncation():
    eos, pad = TOK.eos_id, TOK.pad_id
    completion_ids = torch.tensor([[5, 6, eos, pad], [5, 6, 7, 8], [5, eos, pad, pad], [5, 6, 7, eos]])
    mask = (torch.arange(4) < torch.tensor([[3], [4], [2], [4]])).float()
    rollout = Rollout(torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.bool), completion_ids, mask,
                      ["a"] * 4, 2)
    trainer = _trainer(Recorder([0] * 12))
    assert trainer._truncated(rollout).tolist() == [0.0, 1.0, 0.0, 0.0]  # row 1 has no eos: cut at max length
    split = _length_split(rollout.lengths, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert split == {"length_correct": 2.5, "length_wrong": 4.0}
    assert _length_split(rollout.lengths, torch.zeros(4))["length_correct"] is None
    metrics = trainer.train_step()
    assert 0.0 <= metrics["truncated_rate"] <= 1.0 and metrics["length_correct"] is None  # nothing right


def test_clip_fractions_split_below_and_above():
    trainer = _trainer(Recorder([0, 1, 2, 3] * 3), lr=3e-2, num_iterations=3, epsilon_low=0.01)
    metrics = trainer.train_step()
    assert 0 < metrics["clip_fraction"] <= 1
    assert metrics["clip_fraction"] == pytest.approx(metrics["clip_low"] + metrics["clip_high"])  # disjoint sets
    first = _trainer(Recorder([0, 1, 2, 3] * 3), num_iterations=1).train_step()  # ρ = 1: the clip never acts
    assert first["clip_low"] == first["clip_high"] == 0.0


# ---------------------------------------------------------------- the dashboard

def _history(trainer_steps=2, **changes):
    trainer = _trainer(combine_rewards([(Recorder([0, 1, 0, 1] * 3, "a"), 1.0), (format_reward, 0.1)]), **changes)
    trainer.train(trainer_steps)
    trainer.history.eval_step.append(trainer_steps)
    trainer.history.eval_accuracy.append(0.5)
    return trainer.history


def test_dashboard_draws_every_panel_for_one_history():
    history = _history()
    fig = plot_grpo_dashboard(history, title="one run")
    assert [ax.get_title() for ax in fig.axes] == list(DASHBOARD_PANELS)
    reward = fig.axes[0]
    assert [line.get_label() for line in reward.lines] == ["_child0", "a", "format_reward"]  # total, then terms
    assert list(reward.lines[0].get_ydata()) == history.reward
    expert = fig.axes[DASHBOARD_PANELS.index("expert load")]
    assert list(expert.lines[0].get_ydata()) == [v[-1] for v in history.max_vio]
    accuracy = fig.axes[DASHBOARD_PANELS.index("accuracy")]
    assert list(accuracy.lines[-1].get_ydata()) == [0.5]  # the held-out point
    matplotlib.pyplot.close(fig)


def test_dashboard_overlays_runs_one_colour_each_and_rejects_junk():
    fig = plot_grpo_dashboard({"failure": _history(), "fix": _history(lr=1e-4)})
    entropy = fig.axes[DASHBOARD_PANELS.index("entropy")]
    assert [line.get_label() for line in entropy.lines] == ["failure", "fix"]
    assert entropy.lines[0].get_color() != entropy.lines[1].get_color()
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="runs must be"):
        plot_grpo_dashboard({})
    with pytest.raises(ValueError, match="runs must be"):
        plot_grpo_dashboard({"a": [1, 2]})


def test_dashboard_draws_lengths_with_steps_where_nothing_was_right():
    history = _history()
    history.length_correct = [None, 60.0]  # step 0 had no right sample
    fig = plot_grpo_dashboard(history)
    length = fig.axes[DASHBOARD_PANELS.index("length")]
    assert [line.get_label() for line in length.lines] == ["_child0", "correct", "wrong"]
    assert list(length.lines[1].get_ydata()) == [None, 60.0]
    matplotlib.pyplot.close(fig)


# ---------------------------------------------------------------- the clinic's cases

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
