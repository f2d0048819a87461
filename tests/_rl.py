"""Shared by the tests of minimoe.rl and viz_rl: a tiny policy, a quick GRPO trainer, a recorded reward."""

import torch

from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.rl.trainer import GRPOConfig, GRPOTrainer
from minimoe.tasks import ArithmeticTask, CharTokenizer

TOK = CharTokenizer()


def _policy(seed=0, **changes):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset("tiny-v3", vocab_size=TOK.vocab_size, max_position_embeddings=96,
                                               **changes))


def _trainer(reward_fn, **changes):
    cfg = GRPOConfig(**{**dict(group_size=4, prompts_per_step=3, steps=2, max_new_tokens=6, template="{question}",
                               progress=False, num_iterations=2), **changes})
    return GRPOTrainer(_policy(), TOK, ArithmeticTask(max_digits=1), reward_fn, cfg)


class Recorder:
    """A reward function that returns fixed rewards and keeps what it was asked to score."""

    def __init__(self, rewards, name="recorded"):
        self.rewards, self.calls, self.__name__ = torch.tensor(rewards, dtype=torch.float32), [], name

    def __call__(self, completions, problems):
        self.calls.append((list(completions), list(problems)))
        return self.rewards
