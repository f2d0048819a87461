import itertools
import math
import os
import stat

import pytest
import torch
from torch import nn

from minimoe.checkpoint import CheckpointError, checkpoint_dir
from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.moe.balance import max_violation
from minimoe.optim import make_optimizer, param_groups
from minimoe.tasks import MarkovGrammar
from minimoe.train import (
    History,
    TrainConfig,
    load_checkpoint,
    lr_at,
    optimizer_for,
    save_checkpoint,
    train,
)

TASK = MarkovGrammar()  # 64 tokens in 4 clusters


def tiny(preset: str = "tiny-v3", seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset(preset, vocab_size=TASK.vocab_size, **changes))


def quick(**changes) -> TrainConfig:
    settings = dict(steps=30, batch_size=8, seq_len=16, warmup=3, progress=False)
    settings.update(changes)
    return TrainConfig(**settings)


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


def test_checkpoint_round_trip(tmp_path):
    cfg = quick(steps=4)
    model = tiny()
    optimizer = optimizer_for(model, cfg)
    history = train(model, TASK, cfg, optimizer=optimizer)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, optimizer, history)
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    restored, optimizer_state, restored_history, step, extra = load_checkpoint(path)
    assert restored.cfg == model.cfg and step == 4 and extra == {}
    assert restored_history == history
    tokens, _ = TASK(0, 2, 16, torch.Generator().manual_seed(1))
    model.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(tokens).logits, model(tokens).logits)
    # the optimizer state resumes training exactly
    restored_optimizer = optimizer_for(restored, cfg)
    restored_optimizer.load_state_dict(optimizer_state)
    more = quick(steps=3, warmup=0)
    assert train(restored, TASK, more, restored_optimizer).loss == train(model, TASK, more, optimizer).loss


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = tiny()
    path = save_checkpoint(tmp_path / "model.pt", model)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny(seed=1))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="weights.pt is not a minimoe checkpoint"):
        load_checkpoint(path)


def _corrupt(kind: str, path):
    data = bytearray(path.read_bytes())
    if kind == "empty":
        data = b""
    elif kind == "truncated":
        data = data[:len(data) // 3]
    elif kind == "zeroed":
        data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    elif kind == "cut header":
        data = data[:10]
    elif kind == "old version":
        data = data.replace(b"version 2", b"version 1", 1)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind, message", [
    ("empty", r"ckpt.pt is empty \(0 bytes\)"),
    ("truncated", r"ckpt.pt is corrupt: the sha256"),
    ("zeroed", r"ckpt.pt is corrupt: the sha256"),
    ("cut header", r"ckpt.pt is truncated"),
    ("old version", r"ckpt.pt has format version 1"),
])
def test_load_rejects_damaged_files_naming_the_path_and_the_problem(tmp_path, kind, message):
    path = save_checkpoint(tmp_path / "ckpt.pt", tiny())
    _corrupt(kind, path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_load_rejects_weights_that_do_not_fit_the_config(tmp_path, monkeypatch):
    model = tiny()
    other = ModelConfig.from_preset("tiny-v3", vocab_size=TASK.vocab_size + 1)
    monkeypatch.setattr(model, "cfg", other)
    path = save_checkpoint(tmp_path / "ckpt.pt", model)
    with pytest.raises(CheckpointError, match="ckpt.pt: its weights do not fit its config"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_dir_is_overridable_and_outside_the_package(monkeypatch, tmp_path):
    import minimoe

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path / "home"))
    assert checkpoint_dir() == tmp_path / "home"
    monkeypatch.delenv("MINIMOE_HOME")
    assert str(checkpoint_dir()).endswith(os.path.join(".cache", "minimoe"))
    assert os.path.dirname(minimoe.__file__) not in str(checkpoint_dir())


def test_optimizer_decays_only_weight_matrices_by_default():
    model = tiny()
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 and id(p) not in embeddings for p in decay["params"])
    assert embeddings and embeddings <= {id(p) for p in no_decay["params"]}
    assert any(p.dim() == 1 for p in no_decay["params"])  # norms
    n_params = sum(1 for p in model.parameters() if p.requires_grad)
    assert len(decay["params"]) + len(no_decay["params"]) == n_params
    everything, _ = param_groups(model, 0.1, decay_embeddings=True, decay_norms_and_biases=True)
    assert len(everything["params"]) == n_params
    opt = make_optimizer(model, 1e-3, betas=(0.8, 0.9), weight_decay=0.05, eps=1e-6)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6
    for bad, message in [(dict(lr=0.0), "lr"), (dict(lr=1e-3, betas=(0.9, 1.0)), "betas"),
                         (dict(lr=1e-3, weight_decay=-1.0), "weight_decay"), (dict(lr=float("nan")), "lr")]:
        with pytest.raises(ValueError, match=message):
            make_optimizer(model, **bad)


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


def test_history_round_trips_through_a_dict():
    history = History(moe_layers=[1], step=[0], loss=[1.0], lm_loss=[1.0], balance_loss=[0.0], lr=[0.1],
                      grad_norm=[2.0], expert_load=[[[0.5, 0.5]]], max_vio=[[0.0]])
    assert History.from_dict(history.to_dict()) == history
    history.record(step=1, loss=0.5, new_metric=3)
    assert len(history) == 2 and history.loss == [1.0, 0.5] and history.new_metric == [3]
    with pytest.raises(AttributeError, match="no metric 'reward'"):
        history.reward


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4)


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
