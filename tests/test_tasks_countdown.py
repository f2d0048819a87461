"""minimoe.tasks.countdown: the puzzles, and an expression evaluator that is safe and exact."""

from minimoe.tasks import CountdownProblem, CountdownTask, evaluate_expression


def test_countdown_problems():
    task = CountdownTask(n_numbers=3, max_number=10, max_target=50)
    for p in task.sample(200, seed=0):
        assert len(p.numbers) == 3 and all(1 <= n <= 10 for n in p.numbers) and 1 <= p.target <= 50
        assert evaluate_expression(p.solution, p.numbers, p.operators) == p.target
    assert CountdownProblem((3, 5, 2), 16, "(3+5)*2").key == CountdownProblem((2, 3, 5), 16, "2*(3+5)").key


def test_countdown_evaluator_is_safe_and_exact():
    numbers = (3, 5, 2, 8)
    assert evaluate_expression("(3+5)*2", numbers) == 16
    assert evaluate_expression("8/(5-3)", numbers) == 4 and evaluate_expression("3/2", numbers) == 1.5
    assert evaluate_expression("8/(5-5)", (8, 5, 5)) is None  # division by zero
    assert evaluate_expression("3*3", numbers) is None  # 3 used twice but given once
    assert evaluate_expression("7+1", numbers) is None  # 7 not given
    assert evaluate_expression("3**2", numbers) is None and evaluate_expression("8//3", numbers) is None
    assert evaluate_expression("-3+8", numbers) is None  # no unary minus
    assert evaluate_expression("(" * 60 + "3" + ")" * 60, numbers) == 3
    assert evaluate_expression("8/2", numbers, operators="+-*") is None
    for attack in ["__import__('os').system('true')", "open('x')", "(lambda: 1)()", "[3][0]", "3 if 1 else 2",
                   "1_0", "0x3", "3.0", "1e3", "3;2", "3=3", "(" * 200 + "3" + ")" * 200, "9" * 5000, None]:
        assert evaluate_expression(attack) is None
    problem = CountdownProblem((3, 5, 2), 16, "(3+5)*2")
    assert problem.is_correct("2*(5+3)") and not problem.is_correct("3*5+2")
    assert not problem.is_correct("16")  # 16 is not one of the numbers
