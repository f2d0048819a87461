"""minimoe.viz_rl: the GRPO dashboard draws every panel from a trainer's history, one colour per run."""

import matplotlib
import pytest

from _rl import Recorder, _trainer
from minimoe.rl import combine_rewards, format_reward
from minimoe.viz_rl import DASHBOARD_PANELS, plot_grpo_dashboard

matplotlib.use("Agg")


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
