"""minimoe.moe.balance: the balance losses by hand, expert load, MaxVio and the selection-bias update."""

import pytest
import torch

from minimoe.moe.balance import (
    communication_balance_loss,
    device_balance_loss,
    expert_balance_loss,
    expert_load,
    max_violation,
    sequence_balance_loss,
    update_selection_bias,
)

# Two tokens, four experts, K = 2. Selection counts (2, 1, 0, 1); devices {0, 1} and {2, 3}.
SCORES = torch.tensor([[0.5, 0.3, 0.1, 0.1],
                       [0.4, 0.1, 0.1, 0.4]], dtype=torch.float64)
TOPK = torch.tensor([[0, 1], [0, 3]])


def test_expert_balance_loss_by_hand():
    # f = 4 / (2·2) · (2, 1, 0, 1) = (2, 1, 0, 1); P = (0.45, 0.2, 0.1, 0.25); Σ f P = 0.9 + 0.2 + 0 + 0.25
    loss = expert_balance_loss(SCORES, TOPK, n_experts=4, alpha=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * 1.35, dtype=torch.float64))


def test_device_balance_loss_by_hand():
    # f' = (mean(2, 1), mean(0, 1)) = (1.5, 0.5); P' = (0.65, 0.35); Σ = 0.975 + 0.175
    loss = device_balance_loss(SCORES, TOPK, n_experts=4, n_devices=2, alpha=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * 1.15, dtype=torch.float64))


def test_communication_balance_loss_by_hand():
    # token 0 reaches device 0 only, token 1 both: counts (2, 1); f'' = 2 / (M·T) · counts = 2 / (2·2) · (2, 1)
    loss = communication_balance_loss(SCORES, TOPK, n_experts=4, n_devices=2, m_devices=2, alpha=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * (1.0 * 0.65 + 0.5 * 0.35), dtype=torch.float64))


def test_sequence_balance_loss_by_hand():
    # E = 2, K = 1, two sequences of T = 2 with unnormalised (sigmoid-like) scores.
    scores = torch.tensor([[[0.6, 0.2], [0.3, 0.3]],
                           [[0.9, 0.1], [0.6, 0.2]]], dtype=torch.float64)  # (B, T, E)
    topk = torch.tensor([[[0], [1]], [[0], [0]]])  # (B, T, K)
    # seq A: s' = (.75, .25), (.5, .5) -> P = (.625, .375), f = (1, 1) -> 1.0
    # seq B: s' = (.9, .1), (.75, .25) -> P = (.825, .175), f = (2, 0) -> 1.65
    expected = torch.tensor(0.2 * (1.0 + 1.65) / 2, dtype=torch.float64)
    torch.testing.assert_close(sequence_balance_loss(scores, topk, 2, 0.2), expected)
    flat = sequence_balance_loss(scores.reshape(4, 2), topk.reshape(4, 1), 2, 0.2, seq_len=2)
    torch.testing.assert_close(flat, expected)
    # balancing each sequence is not balancing the batch: the batch-wise loss of the normalised scores differs
    s_norm = scores / scores.sum(-1, keepdim=True)
    batch = expert_balance_loss(s_norm.reshape(4, 2), topk.reshape(4, 1), 2, 0.2)
    torch.testing.assert_close(batch, torch.tensor(0.2 * 1.225, dtype=torch.float64))


def test_gradient_reaches_scores_only_through_p():
    # dL/ds_{i,t} = α f_i / T: the counts carry no gradient (DeepSeek-V2 Eq. (24)-(25)).
    scores = SCORES.clone().requires_grad_()
    expert_balance_loss(scores, TOPK, 4, alpha=0.1).backward()
    f = torch.tensor([2.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(scores.grad, (0.1 * f / 2).expand(2, 4))


def test_uniform_routing_is_the_minimum():
    torch.manual_seed(0)
    n_experts, k, n_tokens, alpha = 8, 2, 16, 0.5
    # Identical tokens pick the same top-K: Σ f P = (E/K)·(mean of the top-K scores) ≥ Σ s = 1,
    # with equality exactly for uniform scores.
    for _ in range(50):
        s = torch.randn(n_experts, dtype=torch.float64).mul(3).softmax(-1).expand(n_tokens, n_experts)
        topk = s.topk(k, dim=-1).indices
        assert expert_balance_loss(s, topk, n_experts, alpha) > alpha
        assert sequence_balance_loss(s, topk, n_experts, alpha, seq_len=n_tokens) > alpha
    uniform = torch.full((n_tokens, n_experts), 1.0 / n_experts, dtype=torch.float64)
    any_topk = torch.randint(n_experts, (n_tokens, k))
    torch.testing.assert_close(expert_balance_loss(uniform, any_topk, n_experts, alpha),
                               torch.tensor(alpha, dtype=torch.float64))
    # perfectly balanced selection also gives α whatever the (softmax) scores
    balanced = torch.arange(n_tokens * k).reshape(n_tokens, k) % n_experts
    scores = torch.randn(n_tokens, n_experts, dtype=torch.float64).softmax(-1)
    torch.testing.assert_close(expert_balance_loss(scores, balanced, n_experts, alpha),
                               torch.tensor(alpha, dtype=torch.float64))
    # collapse onto experts 0 and 1 with scores that favour them is far above the minimum
    collapsed_scores = torch.tensor([0.45, 0.45] + [0.1 / 6] * 6, dtype=torch.float64).expand(n_tokens, -1)
    collapsed = torch.tensor([[0, 1]]).expand(n_tokens, -1)
    assert expert_balance_loss(collapsed_scores, collapsed, n_experts, alpha) > 3 * alpha


def test_max_violation_of_a_topk_routing_is_at_most_e_over_k_minus_1():
    # Wang et al. 2024 (arXiv 2408.15664): with K distinct experts per token one expert takes at most 1/K of the load.
    n_experts, k = 8, 2
    every_token_picks_0_and_1 = torch.tensor([[0, 1]] * 16)  # (N, K): the worst top-2 routing
    worst = max_violation(expert_load(every_token_picks_0_and_1, n_experts))
    torch.testing.assert_close(worst, torch.tensor(n_experts / k - 1))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        idx = torch.rand(32, n_experts, generator=g).pow(4).topk(k, dim=-1).indices
        assert max_violation(expert_load(idx, n_experts)) <= n_experts / k - 1 + 1e-6


def test_load_and_max_violation():
    load = expert_load(TOPK, 4)
    torch.testing.assert_close(load, torch.tensor([0.5, 0.25, 0.0, 0.25]))
    torch.testing.assert_close(max_violation(load), torch.tensor(1.0))  # 0.5 / 0.25 - 1
    torch.testing.assert_close(max_violation(torch.full((8,), 3.0)), torch.tensor(0.0))
    torch.testing.assert_close(max_violation(torch.tensor([0.0, 0.0, 5.0, 0.0])), torch.tensor(3.0))  # E - 1 (K = 1)
    torch.testing.assert_close(max_violation(torch.tensor([[1.0, 1.0], [3.0, 1.0]])), torch.tensor([0.0, 0.5]))
    assert expert_load(torch.randint(6, (5, 7, 2)), 6).sum().item() == pytest.approx(1.0)


def test_bias_update_direction():
    bias = torch.tensor([0.0, 0.1, -0.2, 0.0])
    load = torch.tensor([0.4, 0.1, 0.25, 0.25])  # mean 0.25: expert 0 over, expert 1 under, 2 and 3 on the mean
    new = update_selection_bias(bias, load, gamma=0.01)
    torch.testing.assert_close(new, torch.tensor([-0.01, 0.11, -0.2, 0.0]))
    assert new.dtype == bias.dtype and not new.requires_grad
    torch.testing.assert_close(bias, torch.tensor([0.0, 0.1, -0.2, 0.0]))  # input untouched
    counts = load * 1000  # counts and shares give the same update
    torch.testing.assert_close(update_selection_bias(bias, counts, 0.01), new)


@pytest.mark.parametrize("call, message", [
    (lambda: expert_balance_loss(SCORES, TOPK, 4, alpha=-1.0), r"alpha \(-1.0\) must be non-negative"),
    (lambda: expert_balance_loss(SCORES, TOPK.float(), 4, 0.1), "integer expert indices"),
    (lambda: expert_balance_loss(SCORES, TOPK, 5, 0.1), r"scores last dim \(4\) must equal n_experts \(5\)"),
    (lambda: expert_balance_loss(SCORES, TOPK[:1], 4, 0.1), "same tokens"),
    (lambda: device_balance_loss(SCORES, TOPK, 4, 3, 0.1), r"n_experts \(4\) must be divisible by n_devices \(3\)"),
    (lambda: communication_balance_loss(SCORES, TOPK, 4, 2, 3, 0.1), r"m_devices \(3\)"),
    (lambda: sequence_balance_loss(SCORES, TOPK, 4, 0.1), "seq_len is needed"),
    (lambda: sequence_balance_loss(SCORES, TOPK, 4, 0.1, seq_len=3), r"tokens \(2\) must be divisible by seq_len"),
    (lambda: update_selection_bias(torch.zeros(4), torch.ones(4), gamma=-0.1), r"gamma \(-0.1\)"),
    (lambda: update_selection_bias(torch.zeros(4), torch.ones(3), gamma=0.1), "must both be"),
    (lambda: max_violation(torch.zeros(4)), "mean load is 0"),
    (lambda: expert_load(TOPK, 0), r"n_experts \(0\) must be a positive integer"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
