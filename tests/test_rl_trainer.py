"""Rollouts, per-token log-probs, the GRPO trainer and the R1-Zero demo's pieces."""

import math
import random
import re

import pytest
import torch
import torch.nn.functional as F

from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.moe import update_selection_bias
from minimoe.optim import lr_at
from minimoe.rl import accuracy_reward
from minimoe.rl.demo import addition_task, addition_trace, load_sft_policy, make_trainer, sft_examples
from minimoe.rl.rollout import completion_logprobs, concat_rollouts, sample_groups, score_completions
from minimoe.rl.trainer import GRPOConfig, GRPOTrainer, load_grpo_checkpoint
from minimoe.tasks import ArithmeticTask, CharTokenizer
from minimoe.checkpoint import CheckpointError

TOK = CharTokenizer()


def _policy(seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset("tiny-v3", vocab_size=TOK.vocab_size, max_position_embeddings=96,
                                               **changes))


def _prompts():
    return [TOK.encode(q, add_bos=True) for q in ("12+5=", "7+8=", "123+456=")]


# ---------------------------------------------------------------- rollouts

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


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("field, value, message", [
    ("group_size", 1, "group_size"), ("loss_type", "ppo", "loss_type"), ("scale_rewards", "std", "scale_rewards"),
    ("temperature", 0.0, "temperature"), ("epsilon_low", 1.5, "epsilon_low"), ("beta", -0.1, "beta"),
    ("num_iterations", 0, "num_iterations"), ("ref_reset_every", 0, "ref_reset_every"),
    ("template", "no placeholder", "template"), ("steps", 2.5, "steps"), ("betas", (0.9, 1.0), "betas"),
    ("warmup", -1, "warmup"), ("min_lr_ratio", 2.0, "min_lr_ratio"),
    ("temperature", float("nan"), "temperature")])
def test_bad_settings_raise_clear_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        GRPOConfig(**{field: value})


def test_trainer_rejects_a_tokenizer_larger_than_the_model():
    policy = Transformer(ModelConfig.from_preset("tiny-v3", vocab_size=40))
    with pytest.raises(ValueError, match="vocab_size"):
        GRPOTrainer(policy, TOK, addition_task(), accuracy_reward, GRPOConfig())


# ---------------------------------------------------------------- the demo's data

def test_addition_trace_is_schoolbook_addition_and_slips_only_on_carries():
    assert addition_trace(347, 285) == ("7+5+0=12,4+8+1=13,3+2+1=06", "632")
    assert addition_trace(999, 1) == ("9+1+0=10,9+0+1=10,9+0+1=10", "1000")
    assert addition_trace(347, 285, slip_prob=1.0) == ("7+5+0=12,4+8+0=12,3+2+0=05", "522")
    with pytest.raises(ValueError, match="slip_prob"):
        addition_trace(1, 2, slip_prob=1.5)
    rng = random.Random(0)
    for p in addition_task().sample(300, seed=1):
        assert addition_trace(p.a, p.b)[1] == p.answer
        assert addition_trace(p.a, p.b, 1.0, rng)[1] == p.answer or p.n_carries > 0


def test_sft_examples_supervise_only_the_completion():
    inputs, targets = sft_examples(TOK, 4, slip_prob=0.0, seed=5)
    for row in range(4):
        supervised = targets[row][targets[row] != -100].tolist()
        assert supervised[-1] == TOK.eos_id
        completion = TOK.decode(supervised)
        assert completion.startswith("<think>") and completion.endswith("</answer>")
        prompt = TOK.decode(inputs[row].tolist()).split("<think>")[0]
        assert inputs[row, 0] == TOK.bos_id and re.fullmatch(r"\d{3}\+\d{3}=", prompt)
        a, b = map(int, prompt[:-1].split("+"))
        assert completion.endswith(f"<answer>{a + b}</answer>")  # slip_prob 0: the teacher is right
        # next-token targets: the input shifted by one, on the completion only
        start = len(prompt) + 1
        assert targets[row, start - 1:start - 1 + len(supervised) - 1].tolist() == inputs[row, start:start + len(
            supervised) - 1].tolist()


# ---------------------------------------------------------------- training

@pytest.mark.slow  # about 12 s of CPU
def test_short_run_from_the_shipped_checkpoint_improves_the_policy():
    """The shipped SFT policy never carries when greedy; ten GRPO steps (≈ 10 s of CPU) teach it to."""
    policy = load_sft_policy()
    trainer = make_trainer(policy, steps=10, progress=False, seed=1)
    before = trainer.evaluate(n=64)["accuracy"]
    history = trainer.train()
    after = trainer.evaluate(n=64)["accuracy"]
    assert len(history) == 10 and all(0.0 <= a <= 1.0 for a in history.accuracy)
    assert after > before + 0.15, (before, after)
    assert sum(history.accuracy[-5:]) / 5 > before, history.accuracy  # sampling, too, now beats greedy SFT
    assert max(history.clip_fraction) > 0  # num_iterations = 2: the second pass moves the ratio
    assert history.kl[0] < 1e-6 < history.kl[-1] and all(e > 0 for e in history.entropy)


# ---------------------------------------------------------------- an MoE policy stays balanced during RL

def _varied(completions, problems):
    return torch.arange(len(completions), dtype=torch.float32)


@pytest.mark.parametrize("gamma", [0.0, 0.01])
def test_grpo_moves_the_routing_bias_by_the_load_of_its_training_forward(gamma):
    # DeepSeek-V3 §2.1.2: every optimizer step moves the selection bias by ±γ from its routing; RL is no exception.
    trainer = _one_step(_varied, policy=_policy(bias_update_speed=gamma))
    bias = trainer.policy.layers[1].ffn.router.bias  # tiny-v3: layer 1 is the MoE layer
    assert not bias.any()
    metrics = trainer.train_step()
    load = torch.tensor(metrics["expert_load"][0])  # (E,): the load of the policy's scoring forward
    assert torch.equal(bias, update_selection_bias(torch.zeros_like(bias), load, gamma))
    assert bool(bias.any()) == (gamma > 0) and metrics["max_vio"][0] == pytest.approx(load.max().item() * 8 - 1)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_grpo_adds_the_policys_balance_loss(alpha):
    # Equal rewards give every completion advantage 0: with β = 0 the GRPO loss has no gradient at all, so only the
    # balance loss the policy's config asks for (aux_loss_alpha) can move the router, and it must.
    policy = _policy(aux_loss_alpha=alpha, bias_update_speed=0.0)
    router = policy.layers[1].ffn.router.weight
    before = router.detach().clone()
    metrics = _one_step(lambda c, p: torch.ones(len(c)), policy=policy).train_step()
    assert metrics["grpo_loss"] == 0.0 and (metrics["balance_loss"] > 0) == (alpha > 0)
    assert metrics["loss"] == pytest.approx(metrics["grpo_loss"] + metrics["balance_loss"])
    assert (not torch.equal(router, before)) == (alpha > 0)


def test_dynamic_sampling_drops_groups_without_signal():
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, steps=1, max_new_tokens=4, template="{question}",
                     progress=False, dynamic_sampling=True, max_sampling_rounds=3)
    policy = _policy()
    weights = [p.detach().clone() for p in policy.parameters()]
    constant = GRPOTrainer(policy, TOK, ArithmeticTask(max_digits=1), lambda c, p: torch.ones(len(c)), cfg)
    metrics = constant.train_step()  # every group all-equal: three rollouts, nothing kept, no update
    assert metrics["groups_kept"] == 0 and math.isnan(metrics["loss"]) and constant._draws == 3
    assert all(torch.equal(w, p) for w, p in zip(weights, policy.parameters()))
    varied = GRPOTrainer(policy, TOK, ArithmeticTask(max_digits=1),
                         lambda c, p: torch.arange(len(c), dtype=torch.float32), cfg)
    metrics = varied.train_step()  # every group has distinct rewards: one rollout suffices
    assert metrics["groups_kept"] == 1 and varied._draws == 1 and not math.isnan(metrics["loss"])


def test_checkpoint_round_trip(tmp_path):
    policy = _policy()
    cfg = GRPOConfig(group_size=2, prompts_per_step=2, steps=1, max_new_tokens=8, template="{question}",
                     progress=False, num_iterations=2)
    trainer = GRPOTrainer(policy, TOK, ArithmeticTask(max_digits=1), accuracy_reward, cfg)
    trainer.train()
    path = trainer.save_checkpoint(tmp_path / "grpo.pt")
    loaded = load_grpo_checkpoint(path)
    assert loaded.config == cfg and loaded.step == 1 and loaded.history == trainer.history
    for name, value in policy.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value)
    assert [p.name for p in tmp_path.iterdir()] == ["grpo.pt"]  # no temporary file left behind
    with pytest.raises(CheckpointError, match="bad.pt is not a minimoe checkpoint"):
        torch.save({"format": "other"}, tmp_path / "bad.pt")
        load_grpo_checkpoint(tmp_path / "bad.pt")
    from minimoe.checkpoint import save_checkpoint
    with pytest.raises(CheckpointError, match="lm.pt is not a GRPO checkpoint"):
        load_grpo_checkpoint(save_checkpoint(tmp_path / "lm.pt", policy))


def test_a_custom_loss_fn_replaces_grpo_loss_and_may_return_only_the_loss():
    from minimoe.rl.grpo import grpo_loss

    calls = []

    def bare_loss(*args, **kwargs):
        calls.append(kwargs["loss_type"])
        return grpo_loss(*args, **kwargs)[0]

    trainer = make_trainer(load_sft_policy(), loss_fn=bare_loss, steps=1, prompts_per_step=2,
                           group_size=4, num_iterations=2, progress=False)
    metrics = trainer.train_step()
    assert calls == ["dapo", "dapo"] and math.isnan(metrics["clip_fraction"]) and math.isfinite(metrics["loss"])
    with pytest.raises(ValueError, match="scalar tensor"):
        make_trainer(load_sft_policy(), loss_fn=lambda *a, **k: 0.0, steps=1, prompts_per_step=2,
                     group_size=4, progress=False).train_step()


def test_dynamic_sampling_drops_groups_of_equal_non_integer_rewards():
    constant = lambda completions, problems: torch.full((len(completions),), 0.1)  # noqa: E731
    trainer = make_trainer(load_sft_policy(), steps=1, prompts_per_step=2, group_size=4,
                           dynamic_sampling=True, max_sampling_rounds=2, progress=False)
    trainer.reward_fn = constant
    metrics = trainer.train_step()
    assert metrics["groups_kept"] == 0 and math.isnan(metrics["loss"])  # nothing to learn from: no update


# ---------------------------------------------------------------- failing loudly

def _one_step(reward_fn, policy=None, **changes):
    cfg = GRPOConfig(**{**dict(group_size=2, prompts_per_step=2, steps=1, max_new_tokens=4, template="{question}",
                               progress=False), **changes})
    return GRPOTrainer(_policy() if policy is None else policy, TOK, ArithmeticTask(max_digits=1), reward_fn, cfg)


def nan_reward(completions, problems):
    return torch.tensor([float("nan")] + [1.0] * (len(completions) - 1))


def short_reward(completions, problems):
    return torch.zeros(len(completions) - 1)


def test_a_nonfinite_reward_raises_naming_the_function_or_skips_the_step_when_asked():
    with pytest.raises(ValueError, match="reward function nan_reward returned 1 non-finite reward.* at step 0"):
        _one_step(nan_reward).train_step()
    trainer = _one_step(nan_reward, on_nonfinite_reward="skip")
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    with pytest.warns(RuntimeWarning, match="nan_reward returned 1 non-finite rewards of 4; step skipped"):
        metrics = trainer.train_step()
    assert math.isnan(metrics["loss"]) and trainer.step == 1 and len(trainer.history) == 1
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.policy.parameters()))
    with pytest.raises(ValueError, match="on_nonfinite_reward"):
        GRPOConfig(on_nonfinite_reward="ignore")


def test_a_reward_of_the_wrong_length_raises_naming_the_function():
    with pytest.raises(ValueError, match=r"reward function short_reward returned shape \(3,\) at step 0"):
        _one_step(short_reward).train_step()
    from minimoe.rl import combine_rewards
    with pytest.raises(ValueError, match="short_reward"):  # inside a sum, the failing term is named
        _one_step(combine_rewards([(accuracy_reward, 1.0), (short_reward, 0.1)])).train_step()


def test_grpo_follows_the_one_schedule_constant_by_default():
    constant = _one_step(accuracy_reward, steps=20, warmup=5)
    cosine = _one_step(accuracy_reward, steps=20, warmup=5, min_lr_ratio=0.1)
    lr = constant.cfg.lr
    assert [lr_at(s, cosine.cfg) for s in range(5)] == [lr_at(s, constant.cfg) for s in range(5)] == \
        pytest.approx([lr * (s + 1) / 5 for s in range(5)])
    assert lr_at(19, constant.cfg) == lr and lr_at(19, cosine.cfg) == pytest.approx(0.1 * lr)
    lrs = [lr_at(s, cosine.cfg) for s in range(4, 20)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    cosine.train_step()  # the training step sets the optimizer's rate from the same schedule
    assert cosine.history.lr == [lr_at(0, cosine.cfg)] == [g["lr"] for g in cosine.optimizer.param_groups][:1]


def test_the_grpo_optimizer_comes_from_the_toolkit_with_its_betas():
    trainer = _one_step(accuracy_reward, weight_decay=0.1, betas=(0.9, 0.95))
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0] and groups[0]["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in groups[0]["params"])  # norms, biases, embeddings are not decayed


# ---------------------------------------------------------------- the demo writes outside the package

def test_the_demo_never_writes_into_the_package(tmp_path, monkeypatch):
    from minimoe.rl import demo

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path))
    assert demo.user_checkpoint() == tmp_path / "sft_addition.pt"
    assert demo.shipped_checkpoint().parent.name == "checkpoints"
    shipped = demo.shipped_checkpoint().read_bytes()
    with pytest.raises(SystemExit):
        demo.main(["sft", "--checkpoint", str(demo.shipped_checkpoint()), "--sft-steps", "1"])
    with pytest.raises(SystemExit):
        demo.main(["all", "--ship"])
    demo.main(["sft", "--sft-steps", "1", "--seed", "0"])
    assert (tmp_path / "sft_addition.pt").exists() and demo.shipped_checkpoint().read_bytes() == shipped
    assert demo.grpo_settings() is not demo.grpo_settings()  # a fresh dict: no module global to mutate
    assert demo.addition_task() is not demo.addition_task()


@pytest.mark.slow  # about a minute of CPU: the whole SFT run
def test_the_shipped_checkpoint_is_what_the_documented_command_writes(tmp_path, monkeypatch):
    """``python -m minimoe.rl.demo sft`` writes the shipped policy: same config, same weights (see
    minimoe/rl/checkpoints/README.md); after a change to the model, its initialisation or the SFT recipe, regenerate
    it with ``python -m minimoe.rl.demo sft --ship``."""
    from minimoe.checkpoint import load_checkpoint
    from minimoe.rl import demo

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path))
    torch.set_num_threads(1)
    demo.main(["sft"])
    made, shipped = load_checkpoint(demo.user_checkpoint()).model, demo.load_sft_policy()
    assert made.cfg == shipped.cfg
    made_state, shipped_state = made.state_dict(), shipped.state_dict()
    assert made_state.keys() == shipped_state.keys()
    assert all(torch.equal(made_state[k], shipped_state[k]) for k in made_state), \
        "the shipped SFT policy is not what `python -m minimoe.rl.demo sft` trains: regenerate it with --ship"
