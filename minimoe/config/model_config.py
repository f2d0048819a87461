"""ModelConfig: the flat, Hugging Face-named hyper-parameters of every model in the kit, validated by parts.

Field names follow DeepSeek's Hugging Face configs (``kv_lora_rank``, ``n_routed_experts``,
``num_experts_per_tok`` …) so a reader can put our code beside the official one and ``interop`` can map a
transformers config field by field. The meaning and rules of each group of fields live in one part
(``minimoe.config.parts``): ``AttentionConfig``, ``RopeConfig``, ``MoEConfig``, ``BalanceConfig``, ``MTPConfig``; the model's
sizes stay here. Creating a config builds every part, so a bad value fails at once, naming its field.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from minimoe.config.checks import boolean, integer, real, text
from minimoe.config.parts import PARTS, AttentionConfig, BalanceConfig, MoEConfig, MTPConfig, RopeConfig
from minimoe.config.presets import PRESETS


@dataclass
class ModelConfig:
    """Hyper-parameters of a DeepSeek-style causal language model.

    Every field carries the Hugging Face name; its meaning is documented on the part it belongs to (the comment
    after each group). ``q_lora_rank=None`` means no query compression (DeepSeek-V2-Lite);
    ``n_routed_experts=0`` gives a dense model. An invalid value raises ``ValueError`` naming the field and the
    rule; a value of the wrong type (``True`` or ``2.5`` for an integer, ``None`` or a string for a number) raises
    ``ConfigTypeError``, which is also a ``ValueError``.
    """

    # sizes (checked here)
    vocab_size: int = 128
    hidden_size: int = 64  # d
    intermediate_size: int = 128  # width of the dense SwiGLU FFN
    num_hidden_layers: int = 2  # l
    num_attention_heads: int = 4  # n_h
    max_position_embeddings: int = 256
    # attention: AttentionConfig
    attention_type: str = "mla"
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    q_lora_rank: int | None = None  # d'_c
    kv_lora_rank: int = 32  # d_c
    qk_nope_head_dim: int = 16  # d_h
    qk_rope_head_dim: int = 8  # d^R_h
    v_head_dim: int = 16
    attention_bias: bool = False
    # rotary position embedding: RopeConfig
    rope_theta: float = 10000.0
    rope_interleave: bool = True
    rope_scaling: dict[str, Any] | None = None
    # feed-forward and DeepSeekMoE: MoEConfig
    n_routed_experts: int = 0  # N_r
    n_shared_experts: int = 0  # N_s
    num_experts_per_tok: int = 2  # K_r
    moe_intermediate_size: int = 32
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "greedy"
    scoring_func: str = "softmax"
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    # training-time load balancing: BalanceConfig
    aux_loss_alpha: float = 0.0
    seq_aux: bool = False
    bias_update_speed: float = 0.0
    # multi-token prediction: MTPConfig
    num_nextn_predict_layers: int = 0  # D
    mtp_loss_weight: float = 0.3  # λ
    # misc (checked here)
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- the parts
    @property
    def attention(self) -> AttentionConfig:
        return AttentionConfig.of(self)

    @property
    def rope(self) -> RopeConfig:
        return RopeConfig.of(self)

    @property
    def moe(self) -> MoEConfig:
        return MoEConfig.of(self)

    @property
    def balance(self) -> BalanceConfig:
        return BalanceConfig.of(self)

    @property
    def mtp(self) -> MTPConfig:
        return MTPConfig.of(self)

    # ----------------------------------------------------------------- derived sizes
    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head in MLA: d_h + d^R_h (192 in DeepSeek-V2/V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """DeepSeek's rule: dense for the first ``first_k_dense_replace`` layers, then MoE every ``moe_layer_freq``."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace and layer_idx % self.moe_layer_freq == 0

    @property
    def n_kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def baseline_head_dim(self) -> int:
        return self.head_dim or self.qk_head_dim

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field's type and rule, naming the field; store normalised values (``int``, ``float``)."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "max_position_embeddings"):
            setattr(self, name, integer(name, getattr(self, name), minimum=1))
        self.rms_norm_eps = real("rms_norm_eps", self.rms_norm_eps, positive=True)
        self.initializer_range = real("initializer_range", self.initializer_range, minimum=0)
        self.tie_word_embeddings = boolean("tie_word_embeddings", self.tie_word_embeddings)
        self.name = text("name", self.name)
        for part in PARTS:
            checked = part.of(self)
            for f in dataclasses.fields(part):
                setattr(self, f.name, getattr(checked, f.name))

    # ----------------------------------------------------------------- constructors
    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**copy.deepcopy(d))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A published config (``deepseek-v2-lite``, ``deepseek-v2``, ``deepseek-v3``) or a teaching preset."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = copy.deepcopy(PRESETS[name])
        values.update(overrides)
        return cls(name=name, **values)
