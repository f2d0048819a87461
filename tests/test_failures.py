"""Bad input fails loudly: one table of every case, each with the error it must raise.

Each row is (what goes wrong, a callable that triggers it, the exception type, a message fragment). The
fragment is a regular expression searched case-insensitively in the message; it names the field, the value,
the reward function or the file, so the error says what to fix. The rule for types: a value the user hands in
(a config field, tokens, a temperature, a reward, a file) raises ``ValueError``, or ``TypeError`` when its
type is wrong (config type errors are ``minimoe.config.ConfigTypeError``, both a ``TypeError`` and a
``ValueError``); a non-finite number that appears in a computation (a loss, a gradient, logits) raises
``FloatingPointError``. An empty batch is not an error: it has a defined result, checked after the table.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from minimoe.config import ModelConfig
from minimoe.generate import generate
from minimoe.model import Transformer

NAN, INF = float("nan"), float("inf")
YARN_FACTOR, SCALING = r"rope_scaling.*factor", "routed_scaling_factor"  # fragments of the config rows


@dataclass(frozen=True)
class Case:
    what: str
    trigger: Callable[[Path], object]  # gets a fresh temporary folder
    error: type[BaseException]
    fragment: str


# ---------------------------------------------------------------- helpers (small, CPU, a second or less each)

@functools.cache
def _moe_model_state() -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny-v3")
    return cfg, Transformer(cfg).state_dict()


def _moe_model() -> Transformer:
    """tiny-v3: layer 0 dense, layer 1 MoE (8 routed experts, top-2, noaux_tc); a fresh copy per call."""
    cfg, state = _moe_model_state()
    model = Transformer(cfg)
    model.load_state_dict(state)
    return model.eval()


def _checkpoint_api():
    """save_checkpoint / load_checkpoint of the training toolkit, wherever it lives."""
    for module in ("minimoe.checkpoint", "minimoe.train"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "load_checkpoint") and hasattr(mod, "save_checkpoint"):
            return mod.save_checkpoint, mod.load_checkpoint
    raise ImportError("no save_checkpoint / load_checkpoint in minimoe.checkpoint or minimoe.train")


def _saved_checkpoint(folder: Path) -> Path:
    save, _ = _checkpoint_api()
    return Path(save(folder / "ckpt.pt", _moe_model()))


def _load(path: Path) -> object:
    _, load = _checkpoint_api()
    return load(path)


def _zero_64_bytes(folder: Path) -> object:
    path = _saved_checkpoint(folder)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the stored weights: the archive still opens, the numbers are wrong
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return _load(path)


def _empty_file(folder: Path) -> object:
    path = folder / "ckpt.pt"
    path.write_bytes(b"")
    return _load(path)


def _nan_weights_greedy(_: Path) -> object:
    model = _moe_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(NAN)
    return generate(model, [[1, 2, 3]], max_new_tokens=2, temperature=0.0)


def _grpo_step(reward_fn: Callable) -> object:
    from minimoe.rl.trainer import GRPOConfig, GRPOTrainer
    from minimoe.tasks import ArithmeticTask, CharTokenizer

    tok = CharTokenizer()
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny-v3", vocab_size=tok.vocab_size, max_position_embeddings=96)
    policy = Transformer(cfg)
    grpo = GRPOConfig(group_size=2, prompts_per_step=2, steps=1, max_new_tokens=4, progress=False,
                      eval_every=0)
    return GRPOTrainer(policy, tok, ArithmeticTask(), reward_fn, grpo).train_step()


def nan_reward(completions, problems):
    return torch.full((len(completions),), NAN)


def inf_reward(completions, problems):
    return torch.full((len(completions),), INF)


def minus_inf_reward(completions, problems):
    return torch.tensor([-INF] + [1.0] * (len(completions) - 1))


def short_reward(completions, problems):
    return torch.zeros(len(completions) - 1)


def _train_one_step(model: Transformer, folder: Path) -> object:
    from minimoe.tasks import MarkovGrammar
    from minimoe.train import TrainConfig, train

    task = MarkovGrammar()
    assert model.cfg.vocab_size >= task.vocab_size
    return train(model, task, TrainConfig(steps=2, batch_size=2, seq_len=8, warmup=0, progress=False))


def _nan_loss(folder: Path) -> object:
    model = _moe_model()
    with torch.no_grad():
        model.head.weight.fill_(NAN)  # logits, hence the loss, are NaN from step 0
    return _train_one_step(model, folder)


def _inf_gradient(folder: Path) -> object:
    model = _moe_model()
    model.head.weight.register_hook(lambda grad: grad * INF)  # the loss stays finite, one gradient does not
    return _train_one_step(model, folder)


def _config(**changes) -> Callable[[Path], object]:
    return lambda _: ModelConfig.from_preset("tiny-v3", **changes)


def _yarn(**changes) -> dict:
    return {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, **changes}


# ---------------------------------------------------------------- the table

CASES = [
    # training (rewards, losses, gradients): the error names the reward function or the step
    Case("a NaN reward", lambda _: _grpo_step(nan_reward), ValueError, "nan_reward"),
    Case("a +inf reward", lambda _: _grpo_step(inf_reward), ValueError, "inf_reward"),
    Case("a -inf reward among finite ones", lambda _: _grpo_step(minus_inf_reward), ValueError,
         "minus_inf_reward"),
    Case("a reward function returning the wrong length", lambda _: _grpo_step(short_reward), ValueError,
         "short_reward"),
    Case("a non-finite loss", _nan_loss, FloatingPointError, r"loss.*step|step.*loss"),
    Case("a non-finite gradient with a finite loss", _inf_gradient, FloatingPointError,
         r"grad.*step|step.*grad"),
    # checkpoints: the loader names the file and the problem
    Case("a checkpoint with 64 zeroed bytes", _zero_64_bytes, ValueError,
         r"ckpt\.pt.*(sha256|checksum|corrupt)|(sha256|checksum|corrupt).*ckpt\.pt"),
    Case("an empty checkpoint file", _empty_file, ValueError, r"ckpt\.pt.*empty|empty.*ckpt\.pt"),
    # forward and generation
    Case("uint8 tokens", lambda _: _moe_model()(torch.ones(1, 4, dtype=torch.uint8)), ValueError, "uint8"),
    Case("greedy generate with NaN weights", _nan_weights_greedy, FloatingPointError,
         r"nan|non-finite|not finite"),
    Case("temperature NaN", lambda _: generate(_moe_model(), [[1, 2, 3]], max_new_tokens=2, temperature=NAN),
         ValueError, "temperature"),
    # config: the field is named
    Case("True as an integer field", _config(num_hidden_layers=True), TypeError, "num_hidden_layers"),
    Case("True as n_routed_experts", _config(n_routed_experts=True), TypeError, "n_routed_experts"),
    Case("num_experts_per_tok=2.5", _config(num_experts_per_tok=2.5), TypeError, "num_experts_per_tok"),
    Case("n_shared_experts as a string", _config(n_shared_experts="1"), TypeError, "n_shared_experts"),
    Case("n_shared_experts None", _config(n_shared_experts=None), TypeError, "n_shared_experts"),
    Case("n_group as a string", _config(n_group="4"), TypeError, "n_group"),
    Case("n_group None", _config(n_group=None), TypeError, "n_group"),
    Case("the YaRN factor as a string", _config(rope_scaling=_yarn(factor="4")), TypeError, YARN_FACTOR),
    Case("the YaRN factor None", _config(rope_scaling=_yarn(factor=None)), TypeError, YARN_FACTOR),
    Case("qk_rope_head_dim=0 with MLA", _config(qk_rope_head_dim=0), ValueError, "qk_rope_head_dim"),
    Case("routed_scaling_factor=inf", _config(routed_scaling_factor=INF), ValueError, SCALING),
    Case("routed_scaling_factor=NaN", _config(routed_scaling_factor=NAN), ValueError, SCALING),
    Case("True as a float field", _config(aux_loss_alpha=True), TypeError, "aux_loss_alpha"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_raises_a_named_error(case: Case, tmp_path: Path) -> None:
    with pytest.raises(case.error) as caught:
        case.trigger(tmp_path)
    message = str(caught.value)
    assert re.search(case.fragment, message, re.IGNORECASE | re.DOTALL), (
        f"{case.what}: {type(caught.value).__name__}({message!r}) does not name {case.fragment!r}")


@pytest.mark.parametrize("shape", [(0, 4), (2, 0)], ids=["B=0", "T=0"])
def test_empty_batch_on_an_moe_model_gives_empty_logits(shape: tuple[int, int]) -> None:
    model = _moe_model()
    out = model(torch.zeros(shape, dtype=torch.long))
    assert out.logits.shape == (*shape, model.cfg.vocab_size) and out.routing == []

