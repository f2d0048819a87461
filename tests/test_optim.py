"""minimoe.optim: which parameters decay, the optimizer's checks, and the warmup-cosine schedule."""

import itertools

import pytest
from torch import nn

from _train import tiny
from minimoe.optim import lr_at, make_optimizer, param_groups
from minimoe.train import TrainConfig


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


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(1e-4)
