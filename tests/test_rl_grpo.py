"""minimoe.rl.grpo: advantages, k3 KL, the clipped loss, and equality with TRL's GRPOTrainer._compute_loss."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from minimoe.rl import (LOSS_TYPES, clipped_surrogate, group_advantages, grpo_loss, kl_k3, reinforce_baseline_loss,
                        reinforce_loss)


# ---------------------------------------------------------------- advantages

def test_advantages_zero_mean_per_group_and_unit_std():
    rewards = torch.rand(6 * 8, generator=torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards, group_size=8).view(6, 8)  # (groups, G)
    torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(6), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages.std(dim=1), torch.ones(6), atol=1e-3, rtol=0)


def test_equal_rewards_give_zero_advantage():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    advantages = group_advantages(rewards, group_size=3)
    assert torch.equal(advantages[:6], torch.zeros(6))
    assert advantages[6:].abs().sum() > 0
    for scale in ("group", "batch", "none"):
        assert torch.equal(group_advantages(torch.full((8,), 0.7), 4, scale=scale), torch.zeros(8))


def test_scale_variants_follow_trl_formulas():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0, 0.0])
    centred = rewards - rewards.view(2, 4).mean(dim=1).repeat_interleave(4)
    torch.testing.assert_close(group_advantages(rewards, 4, scale="none"), centred)
    group_std = torch.tensor([0.5, (2 / 3) ** 0.5]).repeat_interleave(4)  # Bessel-corrected, by hand
    torch.testing.assert_close(group_advantages(rewards, 4, scale="group"), centred / (group_std + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, 4, scale="batch"), centred / (rewards.std() + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, 1), torch.zeros(8))


@pytest.mark.parametrize("kwargs, message", [
    ({"group_size": 3}, "group_size"),
    ({"group_size": 4, "scale": "max"}, "scale"),
])
def test_advantage_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(torch.zeros(8), **kwargs)


# ---------------------------------------------------------------- KL and surrogate

def test_k3_is_nonnegative_and_zero_at_equality():
    g = torch.Generator().manual_seed(1)
    logprobs, ref = -3 * torch.rand(64, 10, generator=g), -3 * torch.rand(64, 10, generator=g)
    assert (kl_k3(logprobs, ref) >= 0).all()
    assert torch.equal(kl_k3(logprobs, logprobs), torch.zeros(64, 10))


def test_k3_is_unbiased_for_kl():
    # Sampling tokens from π_θ, E[k3] = KL(π_θ ‖ π_ref).
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    expected_k3 = (p * kl_k3(p.log(), q.log())).sum()
    torch.testing.assert_close(expected_k3, (p * (p / q).log()).sum())


def test_clipped_surrogate_clips_only_in_the_advantage_direction():
    ratio = torch.tensor([[0.5, 1.0, 1.5]])
    torch.testing.assert_close(clipped_surrogate(ratio, torch.ones(1, 1)), -torch.tensor([[0.5, 1.0, 1.2]]))
    torch.testing.assert_close(clipped_surrogate(ratio, -torch.ones(1, 1)), torch.tensor([[0.8, 1.0, 1.5]]))
    torch.testing.assert_close(clipped_surrogate(ratio, torch.ones(1, 1), 0.2, 0.28), -torch.tensor([[0.5, 1.0, 1.28]]))


# ---------------------------------------------------------------- the loss

def _random_batch(seed, B=6, T=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logprobs = -3 * torch.rand(B, T, generator=g, dtype=dtype)
    old = logprobs + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)  # ratios far enough from 1 to clip
    ref = logprobs + 0.4 * torch.randn(B, T, generator=g, dtype=dtype)
    advantages = torch.randn(B, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()  # right-padded completions
    return logprobs, old, ref, advantages, mask


def test_loss_types_aggregate_as_documented():
    logprobs, old, _, advantages, mask = _random_batch(2)
    per_token = clipped_surrogate(torch.exp(logprobs - old), advantages[:, None])
    m = mask.double()
    expected = {
        "grpo": ((per_token * m).sum(1) / m.sum(1)).mean(),
        "bnpo": (per_token * m).sum() / m.sum(),
        "dapo": (per_token * m).sum() / m.sum(),
        "dr_grpo": (per_token * m).sum() / (6 * 16),
    }
    for loss_type in LOSS_TYPES:
        loss, _ = grpo_loss(logprobs, old, advantages, mask, loss_type=loss_type, max_completion_length=16)
        torch.testing.assert_close(loss, expected[loss_type])


def test_fully_masked_rows_and_stats_are_finite():
    logprobs, old, ref, advantages, mask = _random_batch(3)
    mask[0] = 0
    loss, stats = grpo_loss(logprobs, old, advantages, mask, ref_logprobs=ref, beta=0.1)
    assert torch.isfinite(loss) and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert set(stats) == {"ratio", "clip_low", "clip_high", "clip_region", "kl"}
    _, stats = grpo_loss(logprobs, logprobs.detach(), advantages, mask)
    assert stats["ratio"] == pytest.approx(1.0) and stats["clip_region"] == 0.0 and "kl" not in stats


@pytest.mark.parametrize("kwargs, message", [
    ({"loss_type": "ppo"}, "loss_type"),
    ({"loss_type": "dr_grpo"}, "max_completion_length"),
    ({"beta": 0.04}, "ref_logprobs"),
    ({"beta": -1.0}, "beta"),
    ({"advantages": torch.zeros(6, 3)}, "advantages"),
])
def test_loss_arguments_are_validated(kwargs, message):
    logprobs, old, _, advantages, mask = _random_batch(4)
    arguments = {"advantages": advantages, **kwargs}
    with pytest.raises(ValueError, match=message):
        grpo_loss(logprobs, old, mask=mask, **arguments)


def test_on_policy_gradient_is_the_policy_gradient():
    # With ρ = 1 the clip is inactive: ∇ grpo_loss = −(1/B) Σ_i Â_i (1/|o_i|) Σ_t ∇ log π(o_{i,t}).
    logprobs, _, _, advantages, mask = _random_batch(5)
    logprobs.requires_grad_(True)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, mask)
    loss.backward()
    m = mask.double()
    torch.testing.assert_close(logprobs.grad, -advantages[:, None] * m / m.sum(1, keepdim=True) / len(m))


def test_grpo_raises_the_rewarded_arm_of_a_bandit():
    # A softmax policy over 5 arms; arm 3 pays 1, the others 0. Each step samples G = 8 pulls (one "group").
    torch.manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    for _ in range(30):
        with torch.no_grad():
            arms = torch.multinomial(torch.softmax(logits, -1), 8, replacement=True)  # (G,)
        logprobs = torch.log_softmax(logits, -1)[arms].unsqueeze(1)  # (G, 1): one-token completions
        advantages = group_advantages((arms == 3).float(), group_size=8)
        loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, torch.ones(8, 1))
        loss.backward()
        with torch.no_grad():  # plain gradient descent, lr 0.5
            logits -= 0.5 * logits.grad
            logits.grad = None
    assert torch.softmax(logits, -1)[3] > 0.9


def test_reinforce_losses():
    logprobs, _, _, _, mask = _random_batch(6)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    sequence_logprob = (logprobs * mask).sum(1)
    torch.testing.assert_close(reinforce_loss(logprobs, rewards, mask), -(rewards * sequence_logprob).mean())
    torch.testing.assert_close(reinforce_baseline_loss(logprobs, rewards, mask),
                               -((rewards - 0.5) * sequence_logprob).mean())
    torch.testing.assert_close(reinforce_baseline_loss(logprobs, rewards, mask, baseline=0.0),
                               reinforce_loss(logprobs, rewards, mask))


# ---------------------------------------------------------------- equality with TRL
# TRL's loss lives in the method GRPOTrainer._compute_loss(self, model, inputs). Building a real trainer needs a
# model, a tokenizer and a dataset, so instead we call the unbound method on a stand-in `self` that carries exactly
# the attributes the method reads, configured as a single process doing one optimisation step per generation batch
# without gradient accumulation; its `_get_per_token_logps_and_entropies` returns our log-probs instead of running
# a model. Everything after that (ratios, clipping, KL, aggregation, logged clip/KL metrics) is TRL's own code.

class _TRLStandIn:
    def __init__(self, logprobs, *, loss_type, beta, epsilon_low, epsilon_high, max_completion_length):
        self.logprobs = logprobs
        self.loss_type, self.beta = loss_type, beta
        self.epsilon_low = epsilon_low
        self.epsilon_high = epsilon_low if epsilon_high is None else epsilon_high  # as GRPOTrainer.__init__
        self.max_completion_length = max_completion_length
        self.args = SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x)
        self.current_gradient_accumulation_steps = 1
        self.top_entropy_quantile, self.off_policy_mask_threshold = 1.0, None
        self.importance_sampling_level = "token"
        self.use_vllm, self.vllm_importance_sampling_correction = False, False
        self._entropy_bonus_enabled, self.aux_loss_enabled = False, False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        return self.logprobs, torch.zeros_like(self.logprobs), None


@pytest.fixture(scope="module")
def trl_compute_loss():
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    return GRPOTrainer._compute_loss


@pytest.mark.slow  # importing TRL takes several seconds; each comparison itself takes milliseconds
@pytest.mark.equivalence
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_equals_trl(trl_compute_loss, loss_type, epsilon_high, beta):
    logprobs, old, ref, advantages, mask = _random_batch(seed=7)
    settings = {"loss_type": loss_type, "beta": beta, "epsilon_low": 0.2, "epsilon_high": epsilon_high,
                "max_completion_length": 12}
    ours_logprobs = logprobs.clone().requires_grad_(True)
    ours, stats = grpo_loss(ours_logprobs, old, advantages, mask, ref_logprobs=ref, **settings)
    ours.backward()

    trl_logprobs = logprobs.clone().requires_grad_(True)
    stand_in = _TRLStandIn(trl_logprobs, **settings)
    B, T = mask.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 0, dtype=torch.long), "prompt_mask": torch.zeros(B, 0, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),  # as _generate_and_score_completions counts it: the batch's active tokens
    }
    theirs = trl_compute_loss(stand_in, None, inputs)
    theirs.backward()

    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_logprobs.grad, trl_logprobs.grad)
    assert 0 < stats["clip_region"] < 1  # the inputs exercise the clip
    metrics = stand_in._metrics["train"]
    assert stats["clip_low"] == pytest.approx(metrics["clip_ratio/low_mean"][0])
    assert stats["clip_high"] == pytest.approx(metrics["clip_ratio/high_mean"][0])
    assert stats["clip_region"] == pytest.approx(metrics["clip_ratio/region_mean"][0])
    if beta:
        assert stats["kl"] == pytest.approx(metrics["kl"][0])
