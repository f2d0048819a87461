"""Reinforcement learning with verifiable rewards: rule-based rewards and the GRPO family of losses."""

from minimoe.rl.grpo import (LOSS_TYPES, SCALES, clipped_surrogate, group_advantages, grpo_loss, kl_k3,
                             reinforce_baseline_loss, reinforce_loss)
from minimoe.rl.rewards import CombinedReward, accuracy_reward, combine_rewards, format_reward
from minimoe.rl.rollout import completion_logprobs, sample_groups
from minimoe.rl.trainer import GRPOConfig, GRPOTrainer

__all__ = [
    "LOSS_TYPES", "SCALES", "CombinedReward", "GRPOConfig", "GRPOTrainer", "completion_logprobs", "sample_groups", "accuracy_reward", "clipped_surrogate", "combine_rewards",
    "format_reward", "group_advantages", "grpo_loss", "kl_k3", "reinforce_baseline_loss", "reinforce_loss",
]
