"""The model configuration: ``ModelConfig`` (flat Hugging Face field names), its validated parts, and presets.

``checks.py``        the field checks (types and ranges, the field named in every error)
``parts.py``         AttentionConfig, RopeConfig, MoEConfig, BalanceConfig, MTPConfig: each group of fields, documented and checked
``model_config.py``  ModelConfig: the flat fields, derived sizes, ``replace`` / ``to_dict`` / ``from_dict`` / presets
``presets.py``       the released DeepSeek configs, teaching presets, and ``PAPER_VALUES``
"""

from minimoe.config.checks import ConfigTypeError
from minimoe.config.model_config import ModelConfig
from minimoe.config.parts import (
    ATTENTION_TYPES,
    SCORING_FUNCS,
    TOPK_METHODS,
    YARN_KEYS,
    AttentionConfig,
    BalanceConfig,
    MoEConfig,
    MTPConfig,
    RopeConfig,
)
from minimoe.config.presets import PAPER_VALUES, PRESETS

__all__ = [
    "ATTENTION_TYPES",
    "PAPER_VALUES",
    "PRESETS",
    "SCORING_FUNCS",
    "TOPK_METHODS",
    "YARN_KEYS",
    "AttentionConfig",
    "BalanceConfig",
    "ConfigTypeError",
    "MTPConfig",
    "MoEConfig",
    "ModelConfig",
    "RopeConfig",
]
