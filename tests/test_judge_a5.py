"""a5_adapting through the judge, on a temporary copy of the course, as a lecturer grades it.

One batch: the reference (full marks), the release and an empty notebook (0), submissions that each get one thing
wrong and lose only that thing's items (a LoRA scale written ``alpha // r``, gates weighted by the selection bias,
a replay epoch that keeps its short last batch, one that cycles a small original pool in one order, an empty
mapping that gives a zero row), and one that calls ``minimoe``'s reference in every function (0: the sandbox's
copy raises). A regrade repeats the scores and the feedback. Slow; skipped without bubblewrap.
"""

from __future__ import annotations

import pytest
from test_assignments import autograded_text, course, nbgrader, reference_solutions, run, secret, submit  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("assignments")]

LAB = "a5_adapting"
FULL = 12.0  # autograded points; the written answer (2) is graded by hand

# (grade_id, the reference's text, the mistake's text) for each one-mistake submission
MISTAKES = {
    "integer_scaling": ("lora_forward", "+ (alpha / r) * (", "+ (alpha // r) * ("),
    "bias_weighs": ("gates_with_new_experts", "g = scores.gather(-1, chosen)  # (N, K) from the unbiased scores",
                    "g = (scores + bias.float()).gather(-1, chosen)"),
    "keeps_remainder": ("replay_epoch", "n_batches = n_local // n_fresh", "n_batches = -(-n_local // n_fresh)"),
    "one_pool_order": ("replay_epoch", "pools.append(torch.randperm(n_original, generator=gen))",
                       "pools.append(pools[0] if pools else torch.randperm(n_original, generator=gen))"),
    "empty_is_zero": ("extend_embedding", "else weight.mean(0) for ids in sources",
                      "else (weight.mean(0) if init == 'mean' else torch.zeros_like(weight[0])) for ids in sources"),
}
CALLS_REFERENCE = {
    "lora_forward": "from minimoe.adapt import LoRALinear\n"
                    "def lora_forward(x, w0, a, b, alpha):\n"
                    "    layer = LoRALinear(torch.nn.Linear(w0.shape[1], w0.shape[0], bias=False, dtype=w0.dtype),"
                    " a.shape[0], alpha)\n"
                    "    layer.base.weight.data, layer.lora_A.data, layer.lora_B.data = w0, a, b\n"
                    "    return layer(x).detach()\n",
    "lora_merge": "from minimoe.adapt import LoRALinear\n"
                  "def lora_merge(w0, a, b, alpha):\n"
                  "    layer = LoRALinear(torch.nn.Linear(w0.shape[1], w0.shape[0], bias=False), a.shape[0], alpha)\n"
                  "    return (w0 + layer.delta_weight()).detach()\n",
    "lora_unmerge": "from minimoe.adapt import LoRALinear\n"
                    "def lora_unmerge(w, a, b, alpha):\n"
                    "    layer = LoRALinear(torch.nn.Linear(w.shape[1], w.shape[0], bias=False), a.shape[0], alpha)\n"
                    "    layer.merged = True\n    layer.unmerge()\n    return layer.base.weight.detach()\n",
    "extend_embedding": "from minimoe.adapt import extend_vocabulary\n"
                        "def extend_embedding(weight, n_new, init='mean'):\n"
                        "    return extend_vocabulary(None, n_new)\n",
    "replay_epoch": "from minimoe.adapt import replay_rows\n"
                    "def replay_epoch(n_local, n_original, batch_size, fraction, seed):\n"
                    "    g = torch.Generator().manual_seed(seed)\n"
                    "    return [replay_rows(n_local, n_original, batch_size, fraction, g)]\n",
    "gates_with_new_experts": "from minimoe.moe.gate import affinity_scores, select_experts\n"
                              "def gates_with_new_experts(u, e_old, e_new, bias, k, scoring):\n"
                              "    s = affinity_scores(u @ torch.cat([e_old, e_new]).T, scoring)\n"
                              "    sel = select_experts(s, k, bias=bias)\n"
                              "    return torch.zeros_like(s).scatter(-1, sel.experts, sel.gate_weights)\n"}


@pytest.fixture(scope="module")
def a5(course, secret):  # noqa: F811 (the fixtures of test_assignments)
    nbgrader(course, "generate_assignment", LAB, "--force")
    ref = reference_solutions(course, LAB)
    submit(course, LAB, "solved", ref)
    submit(course, LAB, "release")
    submit(course, LAB, "empty", edit=lambda nb: setattr(nb, "cells", []))
    for student, (cell, right, wrong) in MISTAKES.items():
        assert ref[cell].count(right) == 1, student
        submit(course, LAB, student, {**ref, cell: ref[cell].replace(right, wrong)})
    submit(course, LAB, "calls_reference", {**ref, **CALLS_REFERENCE})
    return run(course, LAB, secret), course


def score(a5, student) -> float:
    result = a5[0][student]
    assert result.status == "ok", result
    return result.score


def failed_items(a5, student) -> list[str]:
    return [line for line in autograded_text(a5[1], student, LAB).splitlines() if "FAILED" in line]


def test_reference_full_marks_release_and_empty_zero(a5):
    assert score(a5, "solved") == FULL and failed_items(a5, "solved") == []
    assert score(a5, "release") == 0
    assert score(a5, "empty") == 0


@pytest.mark.parametrize("student, lost, items", [
    ("integer_scaling", 0.25, ["alpha not a multiple of r"]),
    ("bias_weighs", 0.5, ["the bias selects but does not weigh"]),
    ("keeps_remainder", 0.25, ["edge case: a remainder of local rows is dropped"]),
    ("one_pool_order", 0.25, ["edge case: a small original pool is reshuffled"]),
    ("empty_is_zero", 0.25, ["edge case: an empty list is the mean of all rows"]),
])
def test_one_mistake_costs_only_its_own_items(a5, student, lost, items):
    assert score(a5, student) == FULL - lost
    failed = failed_items(a5, student)
    assert len(failed) == len(items) and all(any(name in line for line in failed) for name in items), failed


def test_the_cause_is_named(a5):
    assert "replay_epoch: wrong shape" in "\n".join(failed_items(a5, "keeps_remainder"))
    assert "cycled in one order, not reshuffled" in "\n".join(failed_items(a5, "one_pool_order"))


def test_calling_the_reference_earns_nothing(a5):
    assert score(a5, "calls_reference") == 0
    text = autograded_text(a5[1], "calls_reference", LAB)
    for fn in CALLS_REFERENCE:
        assert f"{fn}: raised an exception" in text, fn


def test_a_regrade_repeats_scores_and_feedback(a5, secret):  # noqa: F811
    results, graded = a5
    students = ["solved", "bias_weighs", "one_pool_order"]
    before = {s: autograded_text(graded, s, LAB) for s in students}
    again = run(graded, LAB, secret, students)
    for s in students:
        assert again[s].score == results[s].score
        assert autograded_text(graded, s, LAB) == before[s]
