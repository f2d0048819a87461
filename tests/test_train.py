import itertools
import math
import os

import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.moe.balance import max_violation, sequence_balance_loss
from minimoe.tasks import MarkovGrammar
from minimoe.train import (
    History,
    TrainConfig,
    balance_loss,
    load_checkpoint,
    lr_at,
    make_optimizer,
    moe_layers,
    resolve_balancing,
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


def test_aux_free_balancing_lowers_max_violation():
    # Per-step MaxVio at this batch (128 tokens) is dominated by sampling noise, so compare the MaxVio of the load
    # summed over the last 15 steps (the V3 paper measures it over large batches).
    loads = {}
    for balance in ("none", "aux_free"):
        model = tiny()
        history = train(model, TASK, quick(steps=40, balance=balance, bias_gamma=0.01))
        loads[balance] = max_violation(torch.tensor(history.expert_load)[-15:].mean(0)).max().item()
        bias = moe_layers(model)[0][1].gate.bias
        assert (bias.abs().sum() > 0) == (balance == "aux_free")
    assert loads["aux_free"] < 0.5 * loads["none"]


def test_sequence_loss_counts_the_unbiased_topk_as_v3_eq_18():
    # DeepSeek-V3 Eq. (18) counts Topk({s_j,t}, K_r) of the raw affinities; the router selects with s + b.
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 6, 8, generator=g)  # (B, T, E)
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 2.0])  # forces experts 6 and 7 into every selection
    selected = (scores + bias).topk(2, dim=-1).indices  # (B, T, K)
    unbiased = scores.topk(2, dim=-1).indices
    assert not torch.equal(selected.sort(-1).values, unbiased.sort(-1).values)
    balancing = resolve_balancing(quick(balance="aux", aux_alpha=0.1, seq_aux=True), tiny().cfg)
    paper = balance_loss([(scores, selected)], 8, balancing, unbiased_topk=True)
    torch.testing.assert_close(paper, sequence_balance_loss(scores, unbiased, 8, 0.1))
    torch.testing.assert_close(balance_loss([(scores, selected)], 8, balancing),
                               sequence_balance_loss(scores, selected, 8, 0.1))
    assert not torch.allclose(paper, sequence_balance_loss(scores, selected, 8, 0.1))


@pytest.mark.parametrize("preset, expected", [("tiny-v3", True), ("tiny-v2", False)])
def test_train_passes_the_unbiased_topk_for_noaux_tc_models(monkeypatch, preset, expected):
    import minimoe.train as train_module
    seen = []
    real = train_module.balance_loss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("unbiased_topk", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "balance_loss", spy)
    train(tiny(preset), TASK, quick(steps=2, warmup=1, balance="aux", aux_alpha=0.01))
    assert seen == [expected, expected]


def test_aux_loss_reaches_the_router_through_the_scores():
    model = tiny("tiny-v2")
    inputs, _ = TASK(0, 4, 16, torch.Generator().manual_seed(0))
    model(inputs)
    routing = [moe.last_routing for _, moe in moe_layers(model)]
    balancing = resolve_balancing(quick(), model.cfg)
    assert balancing.mode == "aux"
    loss = balance_loss(routing, model.cfg.n_routed_experts, balancing)
    loss.backward()
    router = moe_layers(model)[0][1].gate
    assert loss.item() > 0 and router.weight.grad.abs().sum() > 0
    history = train(model, TASK, quick(steps=3))
    assert all(b > 0 for b in history.balance_loss)
    assert history.loss[0] == pytest.approx(history.lm_loss[0] + history.balance_loss[0])


def test_two_runs_with_one_seed_are_identical():
    first = train(tiny(), TASK, quick(steps=8))
    second = train(tiny(), TASK, quick(steps=8))
    assert first.loss == second.loss and first.expert_load == second.expert_load
    other_data = train(tiny(), TASK, quick(steps=8, seed=1))
    assert other_data.loss != first.loss


def test_checkpoint_round_trip(tmp_path):
    cfg = quick(steps=4)
    model = tiny()
    optimizer = make_optimizer(model, cfg)
    history = train(model, TASK, cfg, optimizer=optimizer)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, optimizer, history)
    assert os.listdir(path.parent) == ["model.pt"]  # no temporary file left behind
    restored, optimizer_state, restored_history = load_checkpoint(path)
    assert restored.cfg == model.cfg
    assert restored_history == history
    tokens, _ = TASK(0, 2, 16, torch.Generator().manual_seed(1))
    model.eval(), restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(tokens), model(tokens))
    # the optimizer state resumes training exactly
    restored_optimizer = make_optimizer(restored, cfg)
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


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a minimoe checkpoint"):
        load_checkpoint(path)


def test_history_round_trips_through_a_dict():
    history = History(moe_layers=[1], step=[0], loss=[1.0], lm_loss=[1.0], balance_loss=[0.0], lr=[0.1],
                      grad_norm=[2.0], expert_load=[[[0.5, 0.5]]], max_vio=[[0.0]])
    assert History.from_dict(history.to_dict()) == history


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4)


@pytest.mark.parametrize("preset, mode, alpha, seq_aux, gamma", [
    ("tiny-v3", "aux_free", 0.0, False, 0.001),
    ("tiny-v2", "aux", 0.003, True, 0.0),
    ("tiny-dense", "none", 0.0, False, 0.0),
    ("deepseek-v2", "aux", 0.001, True, 0.0),
    ("deepseek-v3", "both", 0.001, True, 0.001),
])
def test_balancing_defaults_follow_the_model_config(preset, mode, alpha, seq_aux, gamma):
    resolved = resolve_balancing(TrainConfig(), ModelConfig.from_preset(preset))
    assert resolved == (mode, alpha, seq_aux, gamma)


@pytest.mark.parametrize("changes, message", [
    (dict(steps=0), r"steps \(0\) must be a positive integer"),
    (dict(batch_size=-2), "batch_size"),
    (dict(warmup=300), r"warmup \(300\) must be an integer between 0 and steps \(200\)"),
    (dict(lr=0.0), r"lr \(0.0\) must be positive"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio"),
    (dict(betas=(0.9, 1.0)), "betas"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(balance="loss"), r"balance \('loss'\) must be one of"),
    (dict(aux_alpha=-0.1), "aux_alpha"),
    (dict(seed=-1), "seed"),
])
def test_bad_train_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize("preset, changes, message", [
    ("tiny-v2", dict(balance="aux_free", bias_gamma=0.01), "topk_method must be 'noaux_tc'"),
    ("tiny-v3", dict(balance="aux"), r"needs aux_alpha > 0"),
    ("tiny-v3", dict(balance="both", bias_gamma=0.0, aux_alpha=0.1), r"needs bias_gamma > 0"),
    ("tiny-dense", dict(balance="aux", aux_alpha=0.1), "needs a MoE model"),
    ("tiny-v3", dict(seq_len=512), r"seq_len \(512\) must be <= the model's max_position_embeddings \(256\)"),
])
def test_bad_combinations_raise_before_training(preset, changes, message):
    with pytest.raises(ValueError, match=message):
        train(tiny(preset), TASK, quick(**changes))


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
    restored, optimizer_state, saved = load_checkpoint(path)
    assert len(saved) == 7 and optimizer_state is not None
    tokens = torch.randint(0, TASK.vocab_size, (2, 8))
    torch.testing.assert_close(restored(tokens), model.eval()(tokens))
