"""a3_grpo through the judge, end to end, on a temporary copy of the course: one batch of submissions (reference,
release, an empty notebook, a sign-flipped loss, a wrong aggregation, answers that call minimoe's reference) graded
once by ``grade.py`` in its sandbox; the tests read its results. The GRPO training of Part 6 runs in the judge and
applies the student's loss through the data channel. Slow: a few minutes; skipped without bubblewrap.
"""

from __future__ import annotations

import pytest

from test_assignments import autograded_text, course, nbgrader, reference_solutions, run, secret, submit

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("assignments")]
__all__ = ["course", "secret"]  # module fixtures of test_assignments, shared here

LAB, AUTO = "a3_grpo", 13.0  # autograded points; the written answer (2) is graded by hand
LOSS_HEAD = ("def grpo_loss(logprobs, old_logprobs, advantages, mask, loss_type='grpo', epsilon_low=0.2, "
             "epsilon_high=None, beta=0.0, ref_logprobs=None, max_completion_length=None):\n")
REFERENCE_ANSWERS = {
    "group_advantages": "from minimoe.rl.grpo import group_advantages\n",
    "kl_k3": "import minimoe.rl\ndef kl_k3(logprobs, ref_logprobs):\n    return minimoe.rl.kl_k3(logprobs, ref_logprobs)\n",
    "grpo_loss": "from minimoe.rl.grpo import grpo_loss as _reference\n" + LOSS_HEAD
                 + "    return _reference(logprobs, old_logprobs, advantages, mask, loss_type=loss_type, "
                   "epsilon_low=epsilon_low, epsilon_high=epsilon_high, beta=beta, ref_logprobs=ref_logprobs, "
                   "max_completion_length=max_completion_length)[0]\n",
    "rewards": "import torch\nfrom minimoe.tasks.template import extract_answer, parse_completion\n"
               "def accuracy_reward(completions, targets):\n"
               "    return torch.tensor([float(extract_answer(c) == t) for c, t in zip(completions, targets)])\n"
               "def format_reward(completions):\n"
               "    return torch.tensor([float(parse_completion(c).well_formed) for c in completions])\n"}


def wrapped_loss(ref: str, body: str) -> str:
    """The reference grpo_loss renamed to _grpo_loss, and a grpo_loss that calls it as `body` says."""
    return ref.replace("def grpo_loss(", "def _grpo_loss(", 1) + "\n\n" + LOSS_HEAD + body


@pytest.fixture(scope="module")
def a3(course, secret):
    nbgrader(course, "generate_assignment", LAB, "--force")
    ref = reference_solutions(course, LAB)
    args = "logprobs, old_logprobs, advantages, mask, {}, epsilon_low, epsilon_high, beta, ref_logprobs, " \
           "max_completion_length"
    submit(course, LAB, "solved", ref)
    submit(course, LAB, "release")
    submit(course, LAB, "empty", edit=lambda nb: setattr(nb, "cells", []))
    submit(course, LAB, "sign_flipped", {**ref, "grpo_loss": wrapped_loss(
        ref["grpo_loss"], f"    return -_grpo_loss({args.format('loss_type')})\n")})
    submit(course, LAB, "dapo_as_grpo", {**ref, "grpo_loss": wrapped_loss(
        ref["grpo_loss"], f"    return _grpo_loss({args.format(repr('grpo'))}) if loss_type == 'dapo' else "
                          f"_grpo_loss({args.format('loss_type')})\n")})
    submit(course, LAB, "reads_reference", REFERENCE_ANSWERS)
    return run(course, LAB, secret), course


def score(a3, student) -> float:
    results = a3[0]
    assert results[student].status == "ok", results[student]
    return results[student].score


def test_reference_full_marks_release_and_empty_notebook_zero(a3):
    assert score(a3, "solved") == AUTO
    assert score(a3, "release") == 0
    assert score(a3, "empty") == 0


def test_a_sign_flipped_loss_loses_the_training_item(a3):
    text = autograded_text(a3[1], "sign_flipped", LAB)
    assert "[0/3] 4 GRPO steps with your loss: held-out accuracy +10 points: FAILED: grpo_loss: did not train" in text
    assert score(a3, "sign_flipped") == AUTO - 4 - 3  # every value of its loss is wrong, and it does not train


def test_a_wrong_aggregation_loses_only_its_items(a3):
    text = autograded_text(a3[1], "dapo_as_grpo", LAB)
    failed = [line for line in text.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("'dapo'" in line and "grpo_loss: wrong value" in line for line in failed), failed
    assert score(a3, "dapo_as_grpo") == AUTO - 0.75  # Part 6 still passes: 4 steps do not tell aggregations apart


def test_answers_that_call_the_reference_get_nothing(a3):
    assert score(a3, "reads_reference") == 0
    text = autograded_text(a3[1], "reads_reference", LAB)
    for fn in ("group_advantages", "kl_k3", "grpo_loss", "accuracy_reward", "format_reward"):
        assert f"{fn}: raised an exception" in text


def test_a_regrade_repeats_the_scores_and_the_feedback(a3, secret):
    results, course = a3
    before = {s: autograded_text(course, s, LAB) for s in ("solved", "dapo_as_grpo")}
    again = run(course, LAB, secret, ["solved", "dapo_as_grpo"])
    for student, text in before.items():
        assert again[student].score == results[student].score
        assert autograded_text(course, student, LAB) == text
