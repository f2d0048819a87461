"""minimoe.tasks.arithmetic: the problems, carries and answers, and the tasks' argument checks."""

import pytest

from minimoe.tasks import ArithmeticProblem, ArithmeticTask, CountdownTask, check_answer


def test_arithmetic_problems():
    task = ArithmeticTask(min_digits=3, max_digits=3, operations=("-",))
    problems = task.sample(200, seed=0)
    assert all(100 <= p.a <= 999 and 100 <= p.b <= 999 and p.target >= 0 for p in problems)
    assert ArithmeticProblem(999, 1, "+").n_carries == 3 and ArithmeticProblem(123, 456, "+").n_carries == 0
    assert ArithmeticProblem(1000, 1, "-").n_carries == 3 and ArithmeticProblem(58, 26, "-").n_carries == 0
    assert sum(p.n_carries > 0 for p in problems) > 50  # borrows are common, not rare
    assert ArithmeticProblem(3, 5, "+").key == ArithmeticProblem(5, 3, "+").key
    assert ArithmeticProblem(3, 5, "-").question == "3-5=" and ArithmeticProblem(3, 5, "-").answer == "-2"


@pytest.mark.parametrize("make, message", [
    (lambda: ArithmeticTask(min_digits=3, max_digits=2), "min_digits"),
    (lambda: ArithmeticTask(operations=("*",)), "operations"),
    (lambda: CountdownTask(operators="+^"), "operators"),
    (lambda: CountdownTask(min_target=5, max_target=1), "min_target"),
    (lambda: ArithmeticTask().sample(3, split="test"), "split"),
])
def test_task_arguments_are_validated(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_arithmetic_answers():
    p = ArithmeticProblem(5, 7, "+")
    assert check_answer(p, "<think>x</think><answer> 12 </answer>")
    assert check_answer(p, "<answer>+12</answer>") and check_answer(p, "<answer>012</answer>")
    assert not check_answer(p, "<answer>12.0</answer>") and not check_answer(p, "<answer>1 2</answer>")
    assert not check_answer(p, "12") and not check_answer(p, "<answer>" + "1" * 100 + "</answer>")
    assert ArithmeticProblem(3, 5, "-").is_correct("-2")
