"""minimoe.train: a short run learns and records each step; balancing, losses, seeds, failures, resuming."""

import math

import pytest
import torch
from torch import nn

from _train import TASK, quick, tiny
from minimoe.moe.balance import max_violation
from minimoe.train import TrainConfig, load_checkpoint, lr_at, train


def test_short_run_lowers_loss_and_records_every_step():
    cfg = quick()
    history = train(tiny(), TASK, cfg)
    assert len(history) == cfg.steps and history.step == list(range(cfg.steps))
    assert history.lm_loss[0] == pytest.approx(math.log(TASK.vocab_size), abs=0.3)  # an untrained model is uniform
    assert sum(history.lm_loss[-5:]) / 5 < history.lm_loss[0] - 1.0
    assert history.moe_layers == [1]  # tiny-v3: layer 0 dense (first_k_dense_replace=1), layer 1 MoE
    assert len(history.expert_load[-1]) == 1 and len(history.expert_load[-1][0]) == 8
    assert sum(history.expert_load[-1][0]) == pytest.approx(1.0)
    assert history.lr == [lr_at(s, cfg) for s in range(cfg.steps)]
    assert all(g > 0 for g in history.grad_norm)


def _selection_biases(model: nn.Module) -> list[torch.Tensor]:
    return [b for name, b in model.named_buffers() if name.endswith("bias")]


def test_aux_free_balancing_follows_the_model_config_and_lowers_max_violation():
    # Balancing lives in the model config: bias_update_speed = γ of DeepSeek-V3 §2.1.2; train() calls
    # model.update_routing_bias after every step. Per-step MaxVio at this batch (128 tokens) is dominated by sampling
    # noise, so compare the MaxVio of the load summed over the last 15 steps.
    loads = {}
    for gamma in (0.0, 0.01):
        model = tiny(bias_update_speed=gamma)
        history = train(model, TASK, quick(steps=40))
        loads[gamma] = max_violation(torch.tensor(history.expert_load)[-15:].mean(0)).max().item()
        assert (sum(b.abs().sum() for b in _selection_biases(model)) > 0) == (gamma > 0)
    assert loads[0.01] < 0.5 * loads[0.0]


def test_the_loss_adds_the_models_aux_loss():
    model = tiny("tiny-v2")  # aux_loss_alpha > 0: V2's sequence-wise expert-level loss
    assert model.cfg.aux_loss_alpha > 0
    history = train(model, TASK, quick(steps=3))
    assert all(b > 0 for b in history.balance_loss)
    assert history.loss[0] == pytest.approx(history.lm_loss[0] + history.balance_loss[0])
    without = train(tiny("tiny-v2", aux_loss_alpha=0.0), TASK, quick(steps=3))
    assert without.balance_loss == [0.0] * 3


def test_the_step_adds_the_balance_and_mtp_losses_and_records_them_apart():
    history = train(tiny(aux_loss_alpha=0.01, num_nextn_predict_layers=1), TASK, quick(steps=3))
    assert all(b > 0 for b in history.balance_loss) and all(m > 0 for m in history.mtp_loss)
    for step in range(3):
        total = history.lm_loss[step] + history.balance_loss[step] + history.mtp_loss[step]
        assert history.loss[step] == pytest.approx(total)
    assert history.moe_layers == [1, 2]  # the MTP block has the last layer's type (MoE): its routing is recorded


def test_two_runs_with_one_seed_are_identical():
    first = train(tiny(), TASK, quick(steps=8))
    second = train(tiny(), TASK, quick(steps=8))
    assert first.loss == second.loss and first.expert_load == second.expert_load
    other_data = train(tiny(), TASK, quick(steps=8, seed=1))
    assert other_data.loss != first.loss


def test_nonfinite_loss_and_gradient_raise_naming_the_step():
    model = tiny()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at step 0"):
        train(model, TASK, quick(steps=2, warmup=0))
    model = tiny()
    model.head.weight.register_hook(lambda grad: grad * float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"gradient norm became .* at step 0 .*head.weight"):
        train(model, TASK, quick(steps=2, warmup=0))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # no update was applied


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), r"steps \(0\) must be a positive integer"),
    (dict(batch_size=-2), "batch_size"),
    (dict(warmup=300), r"warmup \(300\) must be an integer between 0 and steps \(200\)"),
    (dict(lr=0.0), r"lr \(0.0\) must be positive"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(seed=-1), "seed"),
    (dict(steps=True), r"steps \(True\) must be a positive integer"),
    (dict(lr=float("inf")), r"lr \(inf\) must be a finite number"),
])
def test_bad_train_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def test_seq_len_beyond_the_model_raises_before_training():
    with pytest.raises(ValueError, match=r"seq_len \(512\) must be <= the model's max_position_embeddings \(256\)"):
        train(tiny(), TASK, quick(seq_len=512))


def test_bad_batches_raise():
    def wrong_shape(step, batch_size, seq_len, generator):
        return torch.zeros(batch_size, seq_len + 1, dtype=torch.long), torch.zeros(batch_size, seq_len + 1,
                                                                                     dtype=torch.long)

    with pytest.raises(ValueError, match=r"data_fn must return integer inputs of shape \(batch_size, seq_len\)"):
        train(tiny(), wrong_shape, quick())

    def big_targets(step, batch_size, seq_len, generator):
        return torch.zeros(batch_size, seq_len, dtype=torch.long), torch.full((batch_size, seq_len), 999)

    with pytest.raises(ValueError, match="targets must lie in"):
        train(tiny(), big_targets, quick())


def test_periodic_checkpoints_and_an_interrupted_run_keep_the_work(tmp_path):
    path = tmp_path / "run.pt"

    def interrupted_task(step, batch_size, seq_len, generator):
        if step == 7:
            raise KeyboardInterrupt
        return TASK(step, batch_size, seq_len, generator)

    model = tiny()
    with pytest.warns(UserWarning, match="interrupted after 7 of 30 steps"):
        history = train(model, interrupted_task, quick(checkpoint_path=str(path), checkpoint_every=5))
    assert len(history) == 7  # the steps that finished are all there
    restored, optimizer_state, saved, step, _ = load_checkpoint(path)
    assert len(saved) == 7 and step == 7 and optimizer_state is not None
    tokens = torch.randint(0, TASK.vocab_size, (2, 8))
    torch.testing.assert_close(restored(tokens).logits, model.eval()(tokens).logits)
