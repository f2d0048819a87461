"""minimoe.rl.rollout: sampled groups, their masks and layout, and per-token log-probs and entropies."""

import pytest
import torch
import torch.nn.functional as F

from _rl import TOK, _policy
from minimoe.rl.rollout import completion_logprobs, concat_rollouts, sample_groups, score_completions


def _prompts():
    return [TOK.encode(q, add_bos=True) for q in ("12+5=", "7+8=", "123+456=")]


def test_sample_groups_shapes_masks_and_group_layout():
    policy = _policy()
    rollout = sample_groups(policy, TOK, _prompts(), group_size=4, max_new_tokens=12, temperature=1.0, seed=0)
    B = 3 * 4
    assert rollout.prompt_ids.shape == rollout.prompt_mask.shape == (B, 9)
    assert rollout.completion_ids.shape[0] == B and rollout.completion_ids.shape[1] <= 12
    assert rollout.completion_mask.shape == rollout.completion_ids.shape and len(rollout.completions) == B
    for g, prompt in enumerate(_prompts()):  # rows g·G … g·G + G − 1 share prompt g, left-padded
        for row in range(g * 4, (g + 1) * 4):
            assert rollout.prompt_ids[row][rollout.prompt_mask[row]].tolist() == prompt
            assert not rollout.prompt_mask[row, :9 - len(prompt)].any()
    for row in range(B):  # the mask covers a prefix: real tokens up to and including eos, then padding
        n = int(rollout.lengths[row])
        ids = rollout.completion_ids[row].tolist()
        assert rollout.completion_mask[row, :n].eq(1).all() and rollout.completion_mask[row, n:].eq(0).all()
        assert TOK.eos_id not in ids[:n - 1] and (n == 12 or ids[n - 1] == TOK.eos_id)
        assert rollout.completions[row] == TOK.decode(ids[:n])
    assert len({tuple(r.tolist()) for r in rollout.completion_ids}) > 3  # sampling at T = 1 varies


def test_sampling_is_seeded_and_greedy_groups_agree():
    policy = _policy()
    a = sample_groups(policy, TOK, _prompts(), 3, 10, temperature=1.0, seed=7)
    b = sample_groups(policy, TOK, _prompts(), 3, 10, temperature=1.0, seed=7)
    assert torch.equal(a.completion_ids, b.completion_ids)
    greedy = sample_groups(policy, TOK, _prompts(), 3, 10, temperature=0.0)
    assert len(set(greedy.completions[:3])) == 1 and len(set(greedy.completions[3:6])) == 1
    assert policy.layers[0].attn.mode == "naive"  # the latent-cache mode is restored after sampling


def test_completion_logprobs_equal_manual_gather_of_log_softmax():
    policy = _policy().double()
    rollout = sample_groups(policy, TOK, _prompts(), 2, 10, temperature=1.0, seed=1)
    logprobs, entropy, _ = score_completions(policy, rollout, temperature=0.7)
    torch.testing.assert_close(completion_logprobs(policy, rollout.prompt_ids, rollout.prompt_mask,
                                                   rollout.completion_ids, rollout.completion_mask,
                                                   temperature=0.7, with_entropy=True), (logprobs, entropy))
    assert logprobs.shape == entropy.shape == rollout.completion_ids.shape
    for row in range(len(rollout.completions)):  # each row alone, unpadded, positions from 0
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row]]
        n = int(rollout.lengths[row])
        completion = rollout.completion_ids[row, :n]
        with torch.no_grad():
            logits = policy(torch.cat([prompt, completion])[None]).logits[0, len(prompt) - 1:-1] / 0.7  # (n, V)
        log_p = F.log_softmax(logits, dim=-1)
        torch.testing.assert_close(logprobs[row, :n], log_p.gather(-1, completion[:, None]).squeeze(-1))
        torch.testing.assert_close(entropy[row, :n], -(log_p.exp() * log_p).sum(-1))
        assert logprobs[row, n:].eq(0).all() and entropy[row, n:].eq(0).all()


def test_logprobs_carry_gradients_and_reject_bad_shapes():
    policy = _policy()
    rollout = sample_groups(policy, TOK, _prompts(), 2, 6, temperature=1.0, seed=2)
    score_completions(policy, rollout).logprobs.sum().backward()
    assert policy.embed.weight.grad is not None and policy.embed.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature"):
        score_completions(policy, rollout, temperature=0.0)
    with pytest.raises(ValueError, match="completion_ids"):
        completion_logprobs(policy, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids[:2],
                            rollout.completion_mask[:2])


def test_select_and_concat_groups():
    policy = _policy()
    rollout = sample_groups(policy, TOK, _prompts(), 2, 6, temperature=1.0, seed=3)
    kept = rollout.select_groups(torch.tensor([True, False, True]))
    assert kept.completions == rollout.completions[:2] + rollout.completions[4:]
    both = concat_rollouts([kept, rollout.select_groups(torch.tensor([False, True, False]))], TOK.pad_id)
    assert both.completions == kept.completions + rollout.completions[2:4] and both.prompt_ids.shape[0] == 6
    with torch.no_grad():
        torch.testing.assert_close(score_completions(policy, both).logprobs[:4].sum(-1),
                                   score_completions(policy, kept).logprobs.sum(-1))
