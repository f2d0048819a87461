"""minimoe.tasks.template: the prompt templates, parsing completions, and checking garbage without raising."""

import pytest

from minimoe.tasks import (COMPACT_TEMPLATE, R1_TEMPLATE, ArithmeticProblem, CountdownProblem, check_answer,
                           extract_answer, format_prompt, parse_completion)


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
