"""Verifiable tasks (tokenizer, generators, splits, template parsing, safe evaluation) and rule-based rewards."""

import pytest
import torch

from minimoe.rl import accuracy_reward, combine_rewards, format_reward
from minimoe.tasks import (COMPACT_TEMPLATE, R1_TEMPLATE, ArithmeticProblem, ArithmeticTask, CharTokenizer,
                           CountdownProblem, CountdownTask, check_answer, evaluate_expression, extract_answer,
                           format_completion, format_prompt, parse_completion, split_of)

TASK_IDS = ["arithmetic-1-3", "arithmetic-2-5-negative", "countdown-3", "countdown-4-division"]
TASKS = [ArithmeticTask(min_digits=1, max_digits=3), ArithmeticTask(min_digits=2, max_digits=5, allow_negative=True),
         CountdownTask(), CountdownTask(n_numbers=4, max_number=20, operators="+-*/", use_all=True)]


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trips_prompts_and_completions():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size == len(tok.chars) + 3
    for task in TASKS:
        for p in task.sample(20, seed=3):
            text = format_prompt(p.question, "r1") + " " + format_completion("carry 1\nok", p.answer)
            ids = tok.encode(text, add_bos=True, add_eos=True)
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == len(text) + 2
            assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *tok.encode("12"), tok.eos_id, *tok.encode("3"), tok.pad_id]) == "12"
    assert tok.decode(tok.encode("1") + [tok.eos_id] + tok.encode("3"), stop_at_eos=False) == "13"


def test_tokenizer_rejects_unknown_characters_and_ids():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="'é'"):
        tok.encode("café")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="repeat"):
        CharTokenizer("abca")


# ---------------------------------------------------------------- generators and splits

@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_generators_are_deterministic_and_splits_disjoint(task):
    train, heldout = task.sample(300, "train", seed=0), task.sample(60, "heldout", seed=0)
    assert train == task.sample(300, "train", seed=0)
    assert train != task.sample(300, "train", seed=1)
    assert len({p.key for p in train}) == 300 and len({p.key for p in heldout}) == 60
    more_train = task.sample(300, "train", seed=1)
    assert not ({p.key for p in train + more_train} & {p.key for p in heldout})
    assert all(split_of(p.key, task.heldout_fraction) == "heldout" for p in heldout)
    assert all(p.is_correct(p.answer) for p in train + heldout)


def test_arithmetic_problems():
    task = ArithmeticTask(min_digits=3, max_digits=3, operations=("-",))
    problems = task.sample(200, seed=0)
    assert all(100 <= p.a <= 999 and 100 <= p.b <= 999 and p.target >= 0 for p in problems)
    assert ArithmeticProblem(999, 1, "+").n_carries == 3 and ArithmeticProblem(123, 456, "+").n_carries == 0
    assert ArithmeticProblem(1000, 1, "-").n_carries == 3 and ArithmeticProblem(58, 26, "-").n_carries == 0
    assert sum(p.n_carries > 0 for p in problems) > 50  # borrows are common, not rare
    assert ArithmeticProblem(3, 5, "+").key == ArithmeticProblem(5, 3, "+").key
    assert ArithmeticProblem(3, 5, "-").question == "3-5=" and ArithmeticProblem(3, 5, "-").answer == "-2"


def test_countdown_problems():
    task = CountdownTask(n_numbers=3, max_number=10, max_target=50)
    for p in task.sample(200, seed=0):
        assert len(p.numbers) == 3 and all(1 <= n <= 10 for n in p.numbers) and 1 <= p.target <= 50
        assert evaluate_expression(p.solution, p.numbers, p.operators) == p.target
    assert CountdownProblem((3, 5, 2), 16, "(3+5)*2").key == CountdownProblem((2, 3, 5), 16, "2*(3+5)").key


def test_too_small_a_problem_space_raises():
    with pytest.raises(ValueError, match="distinct"):
        ArithmeticTask(min_digits=1, max_digits=1, operations=("+",)).sample(200)


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


# ---------------------------------------------------------------- template and parsing

def test_templates():
    assert format_prompt("1+2=", "r1") == R1_TEMPLATE.replace("{question}", "1+2=")
    assert format_prompt("1+2=") == COMPACT_TEMPLATE.replace("{question}", "1+2=")
    assert "<think> </think> and <answer> </answer>" in R1_TEMPLATE
    assert format_prompt("7", "Q: {question} A:") == "Q: 7 A:"
    with pytest.raises(ValueError, match="template"):
        format_prompt("7", "no placeholder")


@pytest.mark.parametrize("completion, think, answer, well_formed", [
    ("<think>5+7=12</think><answer>12</answer>", "5+7=12", "12", True),
    ("  <think> a </think>\n<answer> 12 </answer>\n", " a ", "12", True),
    ("<think></think><answer></answer>", "", "", True),
    ("<answer>12</answer>", None, "12", False),
    ("<think>12</think>", "12", None, False),
    ("<think>x</think><answer>12", "x", None, False),
    ("<think>x</think>junk<answer>12</answer>", "x", "12", False),
    ("<think>x</think><answer>12</answer> trailing", "x", "12", False),
    ("<think><think>x</think></think><answer>1</answer>", "<think>x", "1", False),
    ("<think>x</think><answer><answer>12</answer></answer>", "x", "12", False),
    ("<think>x</think><answer>1</answer><answer>2</answer>", "x", "2", False),
    ("</think><think>x<answer>3</answer>", None, "3", False),
    ("", None, None, False),
    ("<<<>>>///answer>", None, None, False),
    ("<answer>" * 5000, None, None, False),
])
def test_parse_completion_edge_cases(completion, think, answer, well_formed):
    parsed = parse_completion(completion)
    assert (parsed.think, parsed.answer, parsed.well_formed) == (think, answer, well_formed)
    assert extract_answer(completion) == answer


GARBAGE = ["", "<answer>", "</answer><answer>", "<answer>9" * 100, "<answer>" + "9" * 10_000 + "</answer>",
           "<answer>1e999</answer>", "<answer>0x1F</answer>", "<answer>__import__('os')</answer>",
           "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>", "<answer>1/0</answer>", "<answer>2/0</answer>", "<answer>4/(0*2)</answer>",
           "<answer>(2-2)</answer>", "<answer>-</answer>", "<answer>\x00\n</answer>", "ü" * 300]


@pytest.mark.parametrize("completion", GARBAGE)
def test_checking_garbage_never_raises(completion):
    for problem in (ArithmeticProblem(5, 7, "+"), CountdownProblem((2, 3, 4), 12, "3*4"),
                    CountdownProblem((2, 0, 4), 2, "2", operators="+-*/")):
        assert check_answer(problem, completion) is False


def test_arithmetic_answers():
    p = ArithmeticProblem(5, 7, "+")
    assert check_answer(p, "<think>x</think><answer> 12 </answer>")
    assert check_answer(p, "<answer>+12</answer>") and check_answer(p, "<answer>012</answer>")
    assert not check_answer(p, "<answer>12.0</answer>") and not check_answer(p, "<answer>1 2</answer>")
    assert not check_answer(p, "12") and not check_answer(p, "<answer>" + "1" * 100 + "</answer>")
    assert ArithmeticProblem(3, 5, "-").is_correct("-2")


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


# ---------------------------------------------------------------- rewards

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
