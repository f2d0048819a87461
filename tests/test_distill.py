"""minimoe.distill: kd_loss against F.kl_div token by token, rejection sampling and logit distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minimoe.distill import kd_loss


def reference_kd(student, teacher, mask, temperature, direction):
    """kl_div(input=log q, target=log p, log_target=True) = Σ p (log p − log q), one masked token at a time."""
    losses = []
    for b, t in mask.nonzero().tolist():
        log_q = F.log_softmax(student[b, t] / temperature, dim=-1)
        log_p = F.log_softmax(teacher[b, t] / temperature, dim=-1)
        if direction == "forward":  # KL(p ‖ q): kl_div's input is the student
            kl = F.kl_div(log_q, log_p, reduction="sum", log_target=True)
        else:  # KL(q ‖ p)
            kl = F.kl_div(log_p, log_q, reduction="sum", log_target=True)
        losses.append(kl)
    return torch.stack(losses).mean() * temperature**2


def random_case(seed, dtype=torch.float64, B=3, T=5, V=11):
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    teacher = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    mask[-1] = False  # a fully padded row
    return student, teacher, mask


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_kd_loss_matches_kl_div(direction, temperature, seed):
    student, teacher, mask = random_case(seed)
    got = kd_loss(student, teacher, mask, temperature=temperature, direction=direction)
    torch.testing.assert_close(got, reference_kd(student, teacher, mask, temperature, direction))


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kd_loss_gradients_match_kl_div_float64(direction):
    student, teacher, mask = random_case(2)
    s1 = student.clone().requires_grad_()
    s2 = student.clone().requires_grad_()
    kd_loss(s1, teacher, mask, temperature=2.0, direction=direction).backward()
    reference_kd(s2, teacher, mask, 2.0, direction).backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    assert s1.grad[~mask].abs().max() == 0  # padding gets no gradient
    torch.autograd.gradcheck(lambda s: kd_loss(s, teacher, mask, temperature=1.5, direction=direction),
                             (student.clone().requires_grad_(),))


def test_kd_loss_ignores_padding_values_and_teacher_gradient():
    student, teacher, mask = random_case(3)
    garbage = student.clone()
    garbage[~mask] = 1e3 * torch.randn_like(garbage[~mask])
    torch.testing.assert_close(kd_loss(student, teacher, mask), kd_loss(garbage, teacher, mask))
    teacher = teacher.clone().requires_grad_()
    s = student.clone().requires_grad_()
    kd_loss(s, teacher, mask).backward()
    assert teacher.grad is None


def test_kd_loss_zero_when_equal_and_positive_otherwise():
    student, teacher, mask = random_case(4)
    for direction in ("forward", "reverse"):
        assert kd_loss(student, student, mask, direction=direction).abs() < 1e-12
        assert kd_loss(student, teacher, mask, direction=direction) > 0
    assert kd_loss(student, teacher, torch.zeros_like(mask)) == 0


def test_kd_loss_float32_student_with_bfloat16_teacher():
    student, teacher, mask = random_case(5, dtype=torch.float32)
    got = kd_loss(student, teacher.to(torch.bfloat16), mask)
    assert got.dtype == torch.float32
    want = reference_kd(student.double(), teacher.to(torch.bfloat16).double(), mask, 1.0, "forward")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(direction="both"), ValueError, "direction"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature="2"), ValueError, "temperature"),
])
def test_kd_loss_rejects_bad_arguments(kwargs, error, words):
    student, teacher, mask = random_case(6)
    with pytest.raises(error, match=words):
        kd_loss(student, teacher, mask, **kwargs)


def test_kd_loss_rejects_bad_shapes_and_dtypes():
    student, teacher, mask = random_case(7)
    with pytest.raises(ValueError, match="teacher_logits shape"):
        kd_loss(student, teacher[..., :-1], mask)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        kd_loss(student[0], teacher[0], mask[0])
    with pytest.raises(ValueError, match="mask shape"):
        kd_loss(student, teacher, mask[:, :-1])
    with pytest.raises(TypeError, match="mask must be bool"):
        kd_loss(student, teacher, mask.long())
    with pytest.raises(TypeError, match="student_logits must be floating"):
        kd_loss(student.long(), teacher, mask)
    with pytest.raises(TypeError, match="teacher_logits must be floating"):
        kd_loss(student, teacher.long(), mask)


def test_rejection_sample_keeps_only_correct_well_formatted_traces():
    from minimoe.distill import rejection_sample
    from minimoe.rl import demo
    from minimoe.rl.rewards import accuracy_reward, format_reward
    from minimoe.tasks.tokenizer import CharTokenizer

    tokenizer, task = CharTokenizer(), demo.addition_task()
    traces = rejection_sample(demo.load_sft_policy(), tokenizer, task, 6, 2, template=demo.TEMPLATE,
                              max_new_tokens=demo.MAX_NEW_TOKENS, seed=0)
    assert traces.n_sampled == 12 and 0 < len(traces.completions) <= 12
    assert traces.inputs.shape == traces.targets.shape == traces.mask.shape
    assert format_reward(traces.completions).eq(1).all()
    for row, target, completion in zip(traces.inputs, traces.targets, traces.completions):
        question = tokenizer.decode(row[1:].tolist()).split("=")[0] + "="
        problem = next(p for p in task.sample(6, "train", seed=0) if p.question == question)
        assert accuracy_reward([completion], [problem]).item() == 1
        learnt = target[target != -100].tolist()
        assert tokenizer.decode(learnt) == completion  # the targets are the completion, eos included


def test_distill_logits_lowers_kd_loss():
    from minimoe import Transformer
    from minimoe.distill import KDConfig, Traces, distill_logits, student_config

    torch.manual_seed(0)
    teacher, student = Transformer(student_config(20, 32)), Transformer(student_config(20, 32))
    inputs = torch.randint(1, 20, (8, 12))
    targets = inputs.roll(-1, 1)
    targets[:, :3] = -100
    traces = Traces(inputs, targets, ["x"] * 8, 8)
    with torch.no_grad():
        before = kd_loss(student(inputs).logits, teacher(inputs).logits, traces.mask).item()
    history = distill_logits(student, teacher, traces, KDConfig(steps=30, batch_size=8, warmup=2, progress=False))
    with torch.no_grad():
        after = kd_loss(student(inputs).logits, teacher(inputs).logits, traces.mask).item()
    assert len(history.loss) == 30 and after < 0.5 * before
    with pytest.raises(ValueError, match="vocab_size"):
        distill_logits(student, Transformer(student_config(24, 32)), traces, KDConfig(steps=1, warmup=0, progress=False))
