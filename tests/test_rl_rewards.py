"""minimoe.rl.rewards: rule-based rewards are vectorised, composable and check their arguments."""

import pytest
import torch

from minimoe.rl import accuracy_reward, combine_rewards, format_reward
from minimoe.tasks import ArithmeticProblem, CountdownProblem


def test_rewards_are_vectorised_and_composable():
    problems = [ArithmeticProblem(5, 7, "+"), ArithmeticProblem(5, 7, "+"), CountdownProblem((3, 5, 2), 16, "(3+5)*2"),
                ArithmeticProblem(1, 1, "+")]
    completions = ["<think>5+7</think><answer>12</answer>", "<answer>12</answer>",
                   "<think>t</think><answer>2*(3+5)</answer>", "<think>t</think><answer>3</answer>"]
    accuracy, fmt = accuracy_reward(completions, problems), format_reward(completions, problems)
    assert torch.equal(accuracy, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(fmt, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    r1_zero = combine_rewards([(accuracy_reward, 1.0), (format_reward, 0.5)])
    assert torch.equal(r1_zero(completions, problems), accuracy + 0.5 * fmt)
    nested = combine_rewards([(r1_zero, 2.0), (lambda c, p: [len(x) > 30 for x in c], -1.0)])
    assert torch.equal(nested(completions, problems), 2 * (accuracy + 0.5 * fmt) - torch.tensor([1.0, 0, 1, 1]))
    assert "accuracy_reward" in repr(r1_zero)
    assert accuracy_reward([], []).shape == (0,)


def test_reward_arguments_are_validated():
    with pytest.raises(ValueError, match="one entry per completion"):
        accuracy_reward(["a", "b"], [ArithmeticProblem(1, 1, "+")])
    with pytest.raises(ValueError, match="at least one"):
        combine_rewards([])
    with pytest.raises(ValueError, match="finite"):
        combine_rewards([(format_reward, float("nan"))])
