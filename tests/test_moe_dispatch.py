"""minimoe.moe.dispatch: sorted dispatch (loop, grouped_mm) and capacity dropping against the reference."""

import math

import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.moe.dispatch import capacity_mask, dispatch_sorted, grouped_mm_supported, sort_by_expert
from minimoe.moe.experts import MLP, DeepSeekMoE, naive_moe_forward


def _cfg(**kw):
    return ModelConfig.from_preset("tiny-v3", **kw)


def _moe(dtype=torch.float64, **kw) -> DeepSeekMoE:
    torch.manual_seed(0)
    moe = DeepSeekMoE(ModelConfig.from_preset("tiny-v3"), **kw).to(dtype)
    moe.router.bias.normal_(std=0.1)
    return moe


def _outputs_and_grads(forward, moe, x):
    x = x.clone().requires_grad_()
    moe.zero_grad(set_to_none=True)
    y = forward(x)
    (y * torch.cos(y)).sum().backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # None: an expert got no token
             for n, p in moe.named_parameters()}
    return y.detach(), x.grad, grads


def _assert_same(a, b, **tol):
    torch.testing.assert_close(a[0], b[0], **tol)
    torch.testing.assert_close(a[1], b[1], **tol)
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], msg=name, **tol)


@pytest.mark.skipif(not grouped_mm_supported(torch.zeros(1)), reason="this torch has no grouped_mm on CPU")
def test_grouped_mm_equals_loop_outputs_and_gradients():
    moe = _moe(torch.float32, experts_impl="loop")
    x = torch.randn(4, 9, 64)
    loop = _outputs_and_grads(moe, moe, x)
    moe.experts_impl = "grouped_mm"
    _assert_same(_outputs_and_grads(moe, moe, x), loop, rtol=1e-5, atol=1e-5)
    reference = _outputs_and_grads(lambda t: naive_moe_forward(moe, t), moe, x)
    _assert_same(loop, reference, rtol=1e-5, atol=1e-5)


def test_experts_impl_is_validated():
    with pytest.raises(ValueError, match="experts_impl"):
        _moe(experts_impl="einsum")
    moe = _moe(experts_impl="grouped_mm")  # float64 has no grouped_mm kernel
    with pytest.raises(ValueError, match="grouped_mm"):
        moe(torch.randn(3, 64, dtype=torch.float64))


def test_capacity_drops_lowest_affinity_tokens():
    # 6 tokens all choose expert 0 first; capacity ⌈1.0 · 12 / 4⌉ = 3 keeps its 3 best
    affinity = torch.tensor([[0.5, 0.1], [0.9, 0.1], [0.2, 0.1], [0.7, 0.1], [0.1, 0.1], [0.8, 0.1]])
    indices = torch.tensor([[0, 1], [0, 2], [0, 3], [0, 1], [0, 2], [0, 3]])
    keep = capacity_mask(affinity, indices, n_experts=4, capacity_factor=1.0)
    assert keep[:, 0].tolist() == [False, True, False, True, False, True]
    assert keep[:, 1].all()  # experts 1-3 hold 2 tokens each, under capacity


def test_capacity_mask_matches_brute_force():
    torch.manual_seed(1)
    n, k, e, factor = 50, 3, 8, 0.7
    affinity = torch.rand(n, k)
    indices = torch.stack([torch.randperm(e)[:k] for _ in range(n)])
    keep = capacity_mask(affinity, indices, e, factor)
    capacity = math.ceil(factor * n * k / e)
    for expert in range(e):
        rows, slots = (indices == expert).nonzero(as_tuple=True)
        best = affinity[rows, slots].argsort(descending=True, stable=True)[:capacity]
        expected = torch.zeros(len(rows), dtype=torch.bool)
        expected[best] = True
        assert torch.equal(keep[rows, slots], expected)


def test_capacity_factor_must_be_positive():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="capacity_factor"):
            _moe(capacity_factor=bad)
        with pytest.raises(ValueError, match="capacity_factor"):
            capacity_mask(torch.rand(2, 1), torch.zeros(2, 1, dtype=torch.long), 2, bad)
    moe = _moe()
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.capacity_factor = 0


def test_dropping_dispatch_equals_naive_outputs_and_gradients():
    moe = _moe(capacity_factor=0.5)
    x = torch.randn(40, 64, dtype=torch.float64)
    dropped = _outputs_and_grads(moe, moe, x)
    _, record = moe.forward_routed(x)
    keep = ~record.dropped
    assert 0 < record.dropped.sum() < keep.numel()  # some, not all, assignments were dropped
    _assert_same(dropped, _outputs_and_grads(lambda t: naive_moe_forward(moe, t, keep), moe, x))
    counts = torch.bincount(record.experts[keep], minlength=8)
    assert counts.max() <= math.ceil(0.5 * keep.numel() / 8)


def test_no_dropping_in_eval_mode_or_without_capacity():
    moe = _moe(capacity_factor=0.5).eval()
    x = torch.randn(40, 64, dtype=torch.float64)
    y, record = moe.forward_routed(x)
    assert record.dropped is None
    moe.train()
    moe.capacity_factor = None
    y_train, record = moe.forward_routed(x)
    torch.testing.assert_close(y_train, y)
    assert record.dropped is None


def test_sort_by_expert_groups_kept_assignments():
    indices = torch.tensor([[2, 0], [1, 2], [0, 3]])
    keep = torch.tensor([[True, True], [False, True], [True, True]])
    order, counts = sort_by_expert(indices, 4, keep)
    assert counts.tolist() == [2, 0, 2, 1]
    assert indices.reshape(-1)[order].tolist() == [0, 0, 2, 2, 3]
    assert order.tolist() == [1, 4, 0, 3, 5]  # stable: earlier tokens first within an expert


def test_dispatch_when_one_expert_takes_everything():
    moe = _moe()
    x = torch.randn(5, 64, dtype=torch.float64)
    indices = torch.full((5, 1), 3)
    weights = torch.rand(5, 1, dtype=torch.float64)
    torch.testing.assert_close(dispatch_sorted(x, weights, indices, moe.experts), weights * moe.experts[3](x))


@pytest.mark.parametrize("preset", ["tiny-v2", "tiny-v3"])
def test_sorted_dispatch_equals_naive_outputs_and_gradients(preset):
    torch.manual_seed(3)
    moe = DeepSeekMoE(ModelConfig.from_preset(preset)).double()
    if moe.router.bias is not None:
        moe.router.bias.normal_()
    x = torch.randn(3, 11, 64, dtype=torch.float64, requires_grad=True)
    y = moe(x)
    (g_x,) = torch.autograd.grad((y * torch.cos(y)).sum(), x)
    y_ref = naive_moe_forward(moe, x)
    (g_ref,) = torch.autograd.grad((y_ref * torch.cos(y_ref)).sum(), x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(g_x, g_ref)


def test_sorted_dispatch_equals_naive_parameter_gradients():
    torch.manual_seed(4)
    moe = DeepSeekMoE(_cfg()).double()
    x = torch.randn(20, 64, dtype=torch.float64)
    moe(x).square().sum().backward()
    fast = {n: p.grad.clone() for n, p in moe.named_parameters()}
    moe.zero_grad()
    naive_moe_forward(moe, x).square().sum().backward()
    for n, p in moe.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, msg=n)


def test_dispatch_with_expert_that_gets_no_tokens():
    experts = torch.nn.ModuleList(MLP(8, 4) for _ in range(4))
    x = torch.randn(5, 8)
    indices = torch.tensor([[0, 2]] * 5)
    weights = torch.rand(5, 2)
    expected = weights[:, :1] * experts[0](x) + weights[:, 1:] * experts[2](x)
    torch.testing.assert_close(dispatch_sorted(x, weights, indices, experts), expected)
