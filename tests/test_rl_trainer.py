"""minimoe.rl.trainer: the GRPO trainer's settings, training, balancing, failures, checkpoints and history."""

import math

import pytest
import torch

from _rl import TOK, Recorder, _policy, _trainer
from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.moe import update_selection_bias
from minimoe.optim import lr_at
from minimoe.rl import accuracy_reward, combine_rewards
from minimoe.rl.demo import addition_task, load_sft_policy, make_trainer
from minimoe.rl.rollout import Rollout
from minimoe.rl.trainer import GRPO_METRICS, GRPOConfig, GRPOTrainer, _length_split, load_grpo_checkpoint, reward_term_column
from minimoe.tasks import ArithmeticTask
from minimoe.checkpoint import CheckpointError


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


# ---------------------------------------------------------------- what the history records

def test_history_has_every_column_a_practitioner_watches():
    for name in ("reward", "accuracy", "zero_std_groups", "clip_fraction", "clip_low", "clip_high", "entropy",
                 "response_length", "length_correct", "length_wrong", "truncated_rate", "kl", "expert_load",
                 "max_vio", "grpo_loss", "grad_norm"):
        assert name in GRPO_METRICS


def test_zero_std_groups_counts_groups_of_equal_rewards():
    # Three groups of four: all equal (1s), all equal (0.1s: a float32 std of ~1e-8, not 0), varied.
    recorder = Recorder([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0, 1, 0, 1])
    metrics = _trainer(recorder).train_step()
    assert metrics["zero_std_groups"] == pytest.approx(2 / 3)
    assert metrics["groups_kept"] == 1.0  # without dynamic sampling every group is trained on (with Â = 0)
    dynamic = _trainer(recorder, dynamic_sampling=True, max_sampling_rounds=2).train_step()
    assert dynamic["zero_std_groups"] == pytest.approx(2 / 3) and dynamic["groups_kept"] == pytest.approx(1 / 3)


def test_reward_terms_are_recorded_unweighted_under_their_own_columns():
    accuracy = Recorder([1, 0, 0, 0] * 3, "accuracy_term")
    style = Recorder([0, 1, 1, 1] * 3, "style_term")
    trainer = _trainer(combine_rewards([(accuracy, 1.0), (style, 0.5)]))
    metrics = trainer.train_step()
    assert reward_term_column(accuracy) == "reward_accuracy_term"
    assert metrics["reward_accuracy_term"] == pytest.approx(0.25) and metrics["reward_style_term"] == pytest.approx(0.75)
    assert metrics["reward"] == pytest.approx(0.25 + 0.5 * 0.75)
    assert trainer.history.reward_style_term == [pytest.approx(0.75)]
    plain = _trainer(Recorder([0, 1] * 6)).train_step()  # a plain reward function has no terms
    assert not any(name.startswith("reward_") for name in plain)


def test_lengths_of_right_and_wrong_samples_and_truncation():
    eos, pad = TOK.eos_id, TOK.pad_id
    completion_ids = torch.tensor([[5, 6, eos, pad], [5, 6, 7, 8], [5, eos, pad, pad], [5, 6, 7, eos]])
    mask = (torch.arange(4) < torch.tensor([[3], [4], [2], [4]])).float()
    rollout = Rollout(torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.bool), completion_ids, mask,
                      ["a"] * 4, 2)
    trainer = _trainer(Recorder([0] * 12))
    assert trainer._truncated(rollout).tolist() == [0.0, 1.0, 0.0, 0.0]  # row 1 has no eos: cut at max length
    split = _length_split(rollout.lengths, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert split == {"length_correct": 2.5, "length_wrong": 4.0}
    assert _length_split(rollout.lengths, torch.zeros(4))["length_correct"] is None
    metrics = trainer.train_step()
    assert 0.0 <= metrics["truncated_rate"] <= 1.0 and metrics["length_correct"] is None  # nothing right


def test_clip_fractions_split_below_and_above():
    trainer = _trainer(Recorder([0, 1, 2, 3] * 3), lr=3e-2, num_iterations=3, epsilon_low=0.01)
    metrics = trainer.train_step()
    assert 0 < metrics["clip_fraction"] <= 1
    assert metrics["clip_fraction"] == pytest.approx(metrics["clip_low"] + metrics["clip_high"])  # disjoint sets
    first = _trainer(Recorder([0, 1, 2, 3] * 3), num_iterations=1).train_step()  # ρ = 1: the clip never acts
    assert first["clip_low"] == first["clip_high"] == 0.0
