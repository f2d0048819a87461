"""ModelConfig: one validated dataclass for every model in the kit.

Field names follow DeepSeek's Hugging Face configs (``kv_lora_rank``, ``n_routed_experts``,
``num_experts_per_tok`` …) so a reader can put our code beside the official one. The presets ``deepseek-v2-lite``,
``deepseek-v2`` and ``deepseek-v3`` hold the values of the released Hugging Face ``config.json`` files (dimensions as
in DeepSeek-V2 §3.1.2 and App. B.1, DeepSeek-V3 §4.2). Where a paper states a different training value than its
released config, the preset keeps the config's and ``PAPER_VALUES`` records the paper's (see its comment); the book's
Sources appendix lists every published figure. Small teaching presets run in seconds on a CPU.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
ATTENTION_TYPES = ("mla", "mha")


@dataclass
class ModelConfig:
    """Hyper-parameters of a DeepSeek-style causal language model.

    Every field carries the Hugging Face name; the paper's symbol is in the comment.
    ``q_lora_rank=None`` means no query compression (DeepSeek-V2-Lite). ``n_routed_experts=0`` gives a dense model.
    """

    # sizes
    vocab_size: int = 128
    hidden_size: int = 64  # d
    intermediate_size: int = 128  # width of the dense SwiGLU FFN
    num_hidden_layers: int = 2  # l
    num_attention_heads: int = 4  # n_h
    max_position_embeddings: int = 256
    # attention
    attention_type: str = "mla"  # "mla" | "mha" (baseline: MHA / GQA / MQA through num_key_value_heads)
    num_key_value_heads: int | None = None  # baseline only: n_g (None = n_h, i.e. MHA)
    head_dim: int | None = None  # baseline only: d_h (None = qk_nope_head_dim + qk_rope_head_dim)
    q_lora_rank: int | None = None  # d'_c (None = a single W^Q, no query compression)
    kv_lora_rank: int = 32  # d_c
    qk_nope_head_dim: int = 16  # d_h of the compressed part
    qk_rope_head_dim: int = 8  # d^R_h
    v_head_dim: int = 16
    rope_theta: float = 10000.0
    rope_interleave: bool = True  # DeepSeek's interleaved pair layout; False = rotate-half
    rope_scaling: dict[str, Any] | None = None  # HF form: {"type": "yarn", "factor", "original_max_position_embeddings", …}
    attention_bias: bool = False
    # feed-forward and DeepSeekMoE
    n_routed_experts: int = 0  # N_r (0 = dense model)
    n_shared_experts: int = 0  # N_s
    num_experts_per_tok: int = 2  # K_r
    moe_intermediate_size: int = 32  # width of one expert
    first_k_dense_replace: int = 0  # the first layers keep a dense FFN
    moe_layer_freq: int = 1
    n_group: int = 1  # expert groups (devices in V2, nodes in V3)
    topk_group: int = 1  # groups a token may use
    topk_method: str = "greedy"  # "greedy" | "group_limited_greedy" (V2) | "noaux_tc" (V3)
    scoring_func: str = "softmax"  # "softmax" (V2) | "sigmoid" (V3)
    norm_topk_prob: bool = False  # renormalise the selected gate values (V3: True)
    routed_scaling_factor: float = 1.0
    # training-time balancing (DeepSeek-V2 §2.2.3, DeepSeek-V3 §2.1.2)
    aux_loss_alpha: float = 0.0  # alpha of the expert-level balance loss (V2 alpha_1, V3 alpha)
    seq_aux: bool = False  # True: f_i, P_i per sequence, as both papers define them (V2 Eq. (24)-(25),
    #                        V3 Eq. (18)-(20)); False: over the whole batch (the variant of V3 §4.5.3)
    bias_update_speed: float = 0.0  # gamma of the auxiliary-loss-free bias update (0 = off)
    # misc
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.validate()

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
        """Raise ``ValueError`` naming the field and the rule it breaks."""
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim",
                    "intermediate_size", "moe_layer_freq"]
        for name in positive:
            _check(isinstance(getattr(self, name), int) and getattr(self, name) > 0,
                   f"{name} ({getattr(self, name)!r}) must be a positive integer")
        _check(isinstance(self.qk_rope_head_dim, int) and self.qk_rope_head_dim >= 0
               and self.qk_rope_head_dim % 2 == 0,
               f"qk_rope_head_dim ({self.qk_rope_head_dim!r}) must be a non-negative even integer")
        _check(self.attention_type in ATTENTION_TYPES,
               f"attention_type ({self.attention_type!r}) must be one of {ATTENTION_TYPES}")
        if self.q_lora_rank == 0:
            self.q_lora_rank = None  # HF configs write 0 or null for "no query compression"
        _check(self.q_lora_rank is None or (isinstance(self.q_lora_rank, int) and self.q_lora_rank > 0),
               f"q_lora_rank ({self.q_lora_rank!r}) must be a positive integer or None")
        if self.num_key_value_heads is not None:
            _check(self.num_key_value_heads > 0, f"num_key_value_heads ({self.num_key_value_heads}) must be positive")
            _check(self.num_attention_heads % self.num_key_value_heads == 0,
                   f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                   f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim is not None:
            _check(self.head_dim > 0 and self.head_dim % 2 == 0,
                   f"head_dim ({self.head_dim}) must be a positive even integer")
        _check(self.rope_theta > 0, f"rope_theta ({self.rope_theta}) must be positive")
        _check(self.rms_norm_eps > 0, f"rms_norm_eps ({self.rms_norm_eps}) must be positive")
        self._validate_rope_scaling()
        self._validate_moe()

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        _check(isinstance(rs, dict), f"rope_scaling ({rs!r}) must be a dict or None")
        kind = rs.get("type", rs.get("rope_type"))
        _check(kind in ("yarn", "default", None), f"rope_scaling type ({kind!r}) must be 'yarn' (or 'default')")
        if kind == "yarn":
            _check(rs.get("factor", 0) >= 1, f"rope_scaling factor ({rs.get('factor')!r}) must be >= 1")
            _check(rs.get("original_max_position_embeddings", 0) > 0,
                   "rope_scaling original_max_position_embeddings must be a positive integer")

    def _validate_moe(self) -> None:
        _check(isinstance(self.n_routed_experts, int) and self.n_routed_experts >= 0,
               f"n_routed_experts ({self.n_routed_experts!r}) must be a non-negative integer")
        _check(self.n_shared_experts >= 0, f"n_shared_experts ({self.n_shared_experts}) must be non-negative")
        _check(self.first_k_dense_replace >= 0,
               f"first_k_dense_replace ({self.first_k_dense_replace}) must be non-negative")
        _check(self.topk_method in TOPK_METHODS, f"topk_method ({self.topk_method!r}) must be one of {TOPK_METHODS}")
        _check(self.scoring_func in SCORING_FUNCS,
               f"scoring_func ({self.scoring_func!r}) must be one of {SCORING_FUNCS}")
        _check(self.routed_scaling_factor > 0,
               f"routed_scaling_factor ({self.routed_scaling_factor}) must be positive")
        _check(self.aux_loss_alpha >= 0, f"aux_loss_alpha ({self.aux_loss_alpha}) must be non-negative")
        _check(self.bias_update_speed >= 0, f"bias_update_speed ({self.bias_update_speed}) must be non-negative")
        if not self.is_moe:
            return
        _check(self.moe_intermediate_size > 0,
               f"moe_intermediate_size ({self.moe_intermediate_size}) must be a positive integer")
        _check(self.num_experts_per_tok > 0, f"num_experts_per_tok ({self.num_experts_per_tok}) must be positive")
        _check(self.num_experts_per_tok <= self.n_routed_experts,
               f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= n_routed_experts "
               f"({self.n_routed_experts})")
        _check(self.n_group > 0, f"n_group ({self.n_group}) must be positive")
        _check(self.n_routed_experts % self.n_group == 0,
               f"n_routed_experts ({self.n_routed_experts}) must be divisible by n_group ({self.n_group})")
        _check(0 < self.topk_group <= self.n_group,
               f"topk_group ({self.topk_group}) must be between 1 and n_group ({self.n_group})")
        per_group = self.n_routed_experts // self.n_group
        _check(self.num_experts_per_tok <= self.topk_group * per_group,
               f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= topk_group * experts per group "
               f"({self.topk_group} * {per_group}): the kept groups must hold enough experts")
        if self.topk_method == "noaux_tc" and self.n_group > 1:
            _check(per_group >= 2, f"noaux_tc scores a group by its top-2 experts: n_routed_experts / n_group "
                                   f"({per_group}) must be >= 2")

    # ----------------------------------------------------------------- constructors
    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s): {', '.join(unknown)}")
        return cls(**copy.deepcopy(d))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A published config (``deepseek-v2-lite``, ``deepseek-v2``, ``deepseek-v3``) or a teaching preset."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        values = copy.deepcopy(PRESETS[name])
        values.update(overrides)
        return cls(name=name, **values)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _yarn(mscale: float) -> dict[str, Any]:
    # DeepSeek-V2 §3.1.4, DeepSeek-V3 §4.3: YaRN on the RoPE dims only, 4K -> 128K/160K context.
    return {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
            "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale}


_MLA_PUBLISHED = dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                      rope_theta=10000.0, rms_norm_eps=1e-6)

PRESETS: dict[str, dict[str, Any]] = {
    # The released Hugging Face configs (deepseek-ai/DeepSeek-V2-Lite, DeepSeek-V2, DeepSeek-V3 config.json).
    # bias_update_speed is not a config field: it is gamma of DeepSeek-V3 §4.2 (the first 14.3T tokens).
    "deepseek-v2-lite": dict(
        **_MLA_PUBLISHED, vocab_size=102400, hidden_size=2048, intermediate_size=10944, num_hidden_layers=27,
        num_attention_heads=16, q_lora_rank=None, max_position_embeddings=163840, rope_scaling=_yarn(0.707),
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=1408,
        first_k_dense_replace=1, n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax",
        norm_topk_prob=False, routed_scaling_factor=1.0, aux_loss_alpha=0.001, seq_aux=True),
    "deepseek-v2": dict(
        **_MLA_PUBLISHED, vocab_size=102400, hidden_size=5120, intermediate_size=12288, num_hidden_layers=60,
        num_attention_heads=128, q_lora_rank=1536, max_position_embeddings=163840, rope_scaling=_yarn(0.707),
        n_routed_experts=160, n_shared_experts=2, num_experts_per_tok=6, moe_intermediate_size=1536,
        first_k_dense_replace=1, n_group=8, topk_group=3, topk_method="group_limited_greedy",
        scoring_func="softmax", norm_topk_prob=False, routed_scaling_factor=16.0, aux_loss_alpha=0.001,
        seq_aux=True),
    "deepseek-v3": dict(
        **_MLA_PUBLISHED, vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
        num_attention_heads=128, q_lora_rank=1536, max_position_embeddings=163840, rope_scaling=_yarn(1.0),
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048,
        first_k_dense_replace=3, n_group=8, topk_group=4, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5, aux_loss_alpha=0.001, seq_aux=True,
        bias_update_speed=0.001),
    # teaching presets: same shape of model, sizes that run in seconds on a laptop CPU
    "tiny-dense": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=0),
    "tiny-v2": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=4, topk_group=2,
        topk_method="group_limited_greedy", scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=1.0, aux_loss_alpha=0.003, seq_aux=True),
    "tiny-v3": dict(
        vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        max_position_embeddings=256, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, bias_update_speed=0.001),
    "small-v3": dict(
        vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        max_position_embeddings=1024, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        moe_intermediate_size=64, first_k_dense_replace=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.5, bias_update_speed=0.001),
}

# Where a paper states a different value than its released config (the preset keeps the config's):
# - DeepSeek-V2 §3.1.2 trains with alpha_1 = 0.003 (and alpha_2 = 0.05, alpha_3 = 0.02 for the device and
#   communication losses, which have no config field); the released config has aux_loss_alpha 0.001. V2-Lite's
#   alpha_1 = 0.001 (App. B.1) agrees with its config.
# - DeepSeek-V3 §4.2 sets the sequence-wise balance factor alpha = 0.0001; the released config has 0.001.
PAPER_VALUES: dict[str, dict[str, Any]] = {
    "deepseek-v2": dict(aux_loss_alpha=0.003),
    "deepseek-v3": dict(aux_loss_alpha=0.0001),
}
