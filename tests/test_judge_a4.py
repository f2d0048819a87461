"""a4_efficient_training through the judge, on a temporary copy of the course, as a lecturer grades it.

One batch: the reference (full marks), the release and an empty notebook (0), submissions that each get one thing
wrong and lose only that thing's items (a quantize without the 1e-4 floor, chapter 10's Exercise 2 solution as
``mtp_loss``, a GEMM that never promotes its limited sum, one that scales the products before summing them, a
``kd_loss`` that lets the gradient reach the teacher), and one that calls ``minimoe``'s reference in every function
(0: the sandbox's copy raises). A regrade repeats the scores and the feedback. Slow; skipped without bubblewrap.
"""

from __future__ import annotations

import pytest
from test_assignments import autograded_text, course, nbgrader, reference_solutions, run, secret, submit  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("assignments")]

LAB = "a4_efficient_training"
FULL = 14.0  # autograded points; the written answer (2) is graded by hand

NO_FLOOR = '''def quantize(x, block=(1, 128)):
    b0, b1 = block
    *lead, M, N = x.shape
    tiles = x.float().reshape(*lead, M // b0, b0, N // b1, b1)
    scale = tiles.abs().amax(dim=(-3, -1), keepdim=True) / 448.0
    q = (tiles / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).reshape(x.shape)
    return q, scale.reshape(*lead, M // b0, N // b1)
'''
# Chapter 10, Exercise 2's solution as a function: NaN for a module without a target (T = k + 1), and the
# logits' dtype where the lab asks for float32.
CHAPTER_10 = '''def mtp_loss(mtp_logits, tokens, weight):
    ces = [F.cross_entropy(lg[:, : tokens.shape[1] - k - 1].flatten(0, 1), tokens[:, k + 1:].flatten())
           for k, lg in enumerate(mtp_logits, start=1)]
    return weight * torch.stack(ces).mean()
'''
NEVER_PROMOTED = '''def blockwise_fp8_gemm(qx, sx, qw, sw, bits=None):
    x = qx.float() * sx.repeat_interleave(128, 1)
    w = qw.float() * sw.repeat_interleave(128, 0).repeat_interleave(128, 1)
    products = x[:, None, :] * w[None, :, :]
    if bits is None:
        return products.sum(-1)
    partial = torch.zeros(products.shape[:2])
    for k in range(products.shape[-1]):
        partial = round_to_bits(partial + products[..., k], bits)
    return partial
'''
SCALED_FIRST = '''def blockwise_fp8_gemm(qx, sx, qw, sw, bits=None):
    x = qx.float() * sx.repeat_interleave(128, 1)
    w = qw.float() * sw.repeat_interleave(128, 0).repeat_interleave(128, 1)
    out = torch.zeros(x.shape[0], w.shape[0])
    for c in range(x.shape[1] // 128):
        products = x[:, None, 128 * c:128 * (c + 1)] * w[None, :, 128 * c:128 * (c + 1)]
        partial = products.sum(-1) if bits is None else torch.zeros(out.shape)
        if bits is not None:
            for k in range(128):
                partial = round_to_bits(partial + products[..., k], bits)
        out += partial
    return out
'''
CALLS_REFERENCE = {
    "quantize": "from minimoe import fp8\ndef quantize(x, block=(1, 128)):\n    return fp8.quantize(x, 'e4m3', block)\n",
    "dequantize": "def dequantize(q, scale, block=(1, 128)):\n    return fp8.dequantize(q, scale, block)\n",
    "blockwise_fp8_gemm": "def blockwise_fp8_gemm(qx, sx, qw, sw, bits=None):\n"
                          "    return fp8.accumulate(qx[:, None].float() * qw[None].float(), bits)\n",
    "mtp_combine": "from minimoe import mtp\ndef mtp_combine(h_prev, emb_next, norm_h, norm_e, proj):\n"
                   "    return mtp.mtp_combine(h_prev, emb_next, norm_h, norm_e, proj)\n",
    "mtp_loss": "def mtp_loss(mtp_logits, tokens, weight):\n    return mtp.mtp_loss(mtp_logits, tokens, weight)\n",
    "kd_loss": "from minimoe.distill import kd_loss as _kd\n"
               "def kd_loss(student_logits, teacher_logits, mask, temperature=1.0, direction='forward'):\n"
               "    return _kd(student_logits, teacher_logits, mask, temperature=temperature, direction=direction)\n"}


@pytest.fixture(scope="module")
def a4(course, secret):  # noqa: F811 (the fixtures of test_assignments)
    nbgrader(course, "generate_assignment", LAB, "--force")
    ref = reference_solutions(course, LAB)
    undetached = ref["kd_loss"].replace("teacher_logits.detach()", "teacher_logits")
    assert undetached != ref["kd_loss"]
    submit(course, LAB, "solved", ref)
    submit(course, LAB, "release")
    submit(course, LAB, "empty", edit=lambda nb: setattr(nb, "cells", []))
    submit(course, LAB, "no_floor", {**ref, "quantize": NO_FLOOR})
    submit(course, LAB, "chapter_10_mtp_loss", {**ref, "mtp_loss": CHAPTER_10})
    submit(course, LAB, "never_promoted", {**ref, "blockwise_fp8_gemm": NEVER_PROMOTED})
    submit(course, LAB, "scaled_first", {**ref, "blockwise_fp8_gemm": SCALED_FIRST})
    submit(course, LAB, "undetached", {**ref, "kd_loss": undetached})
    submit(course, LAB, "calls_reference", {**ref, **CALLS_REFERENCE})
    return run(course, LAB, secret), course


def score(a4, student) -> float:
    result = a4[0][student]
    assert result.status == "ok", result
    return result.score


def failed_items(a4, student) -> list[str]:
    return [line for line in autograded_text(a4[1], student, LAB).splitlines() if "FAILED" in line]


def test_reference_full_marks_release_and_empty_zero(a4):
    assert score(a4, "solved") == FULL and failed_items(a4, "solved") == []
    assert score(a4, "release") == 0
    assert score(a4, "empty") == 0


@pytest.mark.parametrize("student, lost, items", [
    ("no_floor", 0.5, ["edge case: all-zero tiles", "edge case: blocks below the 1e-4 floor"]),
    ("chapter_10_mtp_loss", 1.0, ["float64 logits: a float32 loss", "edge case: a deepest module without a target"]),
    ("never_promoted", 1.0, ["a 14-bit accumulator promoted", "edge case: an 8-bit accumulator"]),
    ("scaled_first", 1.0, ["a 14-bit accumulator promoted", "edge case: an 8-bit accumulator"]),
    ("undetached", 0.5, ["the gradient reaches the student only"]),
])
def test_one_mistake_costs_only_its_own_items(a4, student, lost, items):
    assert score(a4, student) == FULL - lost
    failed = failed_items(a4, student)
    assert len(failed) == len(items) and all(any(name in line for line in failed) for name in items), failed


def test_the_cause_is_named_first(a4):
    failed = "\n".join(failed_items(a4, "no_floor") + failed_items(a4, "chapter_10_mtp_loss"))
    assert "quantize: NaN or inf in the result" in failed  # an all-zero tile: NaN, before any wrong code
    assert "mtp_loss: NaN or inf in the result" in failed  # T = k + 1: NaN, before the wrong value
    assert "kd_loss: a gradient reaches the teacher" in "\n".join(failed_items(a4, "undetached"))


def test_calling_the_reference_earns_nothing(a4):
    assert score(a4, "calls_reference") == 0
    text = autograded_text(a4[1], "calls_reference", LAB)
    for fn in ("quantize", "dequantize", "blockwise_fp8_gemm", "mtp_combine", "mtp_loss", "kd_loss"):
        assert f"{fn}: raised an exception" in text, fn


def test_a_regrade_repeats_scores_and_feedback(a4, secret):  # noqa: F811
    results, graded = a4
    students = ["solved", "no_floor", "scaled_first"]
    before = {s: autograded_text(graded, s, LAB) for s in students}
    again = run(graded, LAB, secret, students)
    for s in students:
        assert again[s].score == results[s].score
        assert autograded_text(graded, s, LAB) == before[s]
