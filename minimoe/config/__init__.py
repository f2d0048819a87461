"""The model configuration: ``ModelConfig`` (flat Hugging Face field names, declared once), the routing schemes, and
presets.

``checks.py``        the field checks (types and ranges, the field named in every error)
``model_config.py``  ModelConfig: every field with its meaning, its checks, derived properties, ``replace`` / presets
``routing.py``       ROUTING_SCHEMES: the one registry of routing schemes (``topk_method``)
``presets.py``       the released DeepSeek configs, teaching presets, and ``PAPER_VALUES``
"""

from minimoe.config.checks import ConfigTypeError
from minimoe.config.model_config import ATTENTION_TYPES, SCORING_FUNCS, YARN_KEYS, ModelConfig
from minimoe.config.presets import PAPER_VALUES, PRESETS
from minimoe.config.routing import ROUTING_SCHEMES, RoutingScheme

__all__ = [
    "ATTENTION_TYPES",
    "PAPER_VALUES",
    "PRESETS",
    "ROUTING_SCHEMES",
    "SCORING_FUNCS",
    "YARN_KEYS",
    "ConfigTypeError",
    "ModelConfig",
    "RoutingScheme",
]
