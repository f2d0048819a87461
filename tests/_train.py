"""Shared by the tests of minimoe.train, .checkpoint and .optim: a tiny model, a task, a quick run."""

import torch

from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.tasks import MarkovGrammar
from minimoe.train import TrainConfig

TASK = MarkovGrammar()  # 64 tokens in 4 clusters


def tiny(preset: str = "tiny-v3", seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset(preset, vocab_size=TASK.vocab_size, **changes))


def quick(**changes) -> TrainConfig:
    settings = dict(steps=30, batch_size=8, seq_len=16, warmup=3, progress=False)
    settings.update(changes)
    return TrainConfig(**settings)
