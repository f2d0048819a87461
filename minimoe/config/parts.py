"""The validated parts of ``ModelConfig``: attention, RoPE, DeepSeekMoE routing, load balancing, MTP.

Each part is a small frozen dataclass that owns its fields' meaning (the docstring under each field) and rules
(``__post_init__``). ``ModelConfig`` keeps the flat Hugging Face field names and builds every part from them when
it is created, so ``ModelConfig(kv_lora_rank=…)``, ``cfg.kv_lora_rank`` and ``interop`` read as before, while
``cfg.attention``, ``cfg.rope``, ``cfg.moe``, ``cfg.balance`` and ``cfg.mtp`` give one part on its own. A new setting goes into
the part it belongs to (and into ``ModelConfig``'s flat fields, under the Hugging Face name when there is one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from minimoe.config.checks import ConfigTypeError, boolean, choice, integer, real, require

ATTENTION_TYPES = ("mla", "mha")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate")


class _Part:
    """Builds a part from any object holding its fields (a ``ModelConfig``) and stores normalised values."""

    @classmethod
    def of(cls, source: Any) -> Any:
        return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})

    def _set(self, **values: Any) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: normalise once, in __post_init__


@dataclass(frozen=True)
class AttentionConfig(_Part):
    """Multi-head Latent Attention (DeepSeek-V2 §2.1.2–2.1.3) or the MHA/GQA/MQA baseline (chapter 1)."""

    attention_type: str
    """"mla" (DeepSeek) or "mha" (the baseline: MHA, GQA or MQA through ``num_key_value_heads``)."""
    num_attention_heads: int
    """n_h, query heads."""
    num_key_value_heads: int | None
    """Baseline only: n_g key/value heads (None = n_h, i.e. MHA; 1 = MQA)."""
    head_dim: int | None
    """Baseline only: d_h (None = qk_nope_head_dim + qk_rope_head_dim, the MLA query/key width)."""
    q_lora_rank: int | None
    """d'_c, the query latent (DeepSeek-V2 Eq. (12)); None (or 0 in HF configs) = one W^Q, no compression."""
    kv_lora_rank: int
    """d_c, the key/value latent that the cache stores (DeepSeek-V2 Eq. (9))."""
    qk_nope_head_dim: int
    """d_h, the per-head query/key width without RoPE."""
    qk_rope_head_dim: int
    """d^R_h, the decoupled RoPE width (DeepSeek-V2 §2.1.3); RoPE turns pairs of dims, so even and, for MLA, > 0."""
    v_head_dim: int
    """Per-head value width."""
    attention_bias: bool
    """Biases on the attention projections (False in every DeepSeek config)."""

    def __post_init__(self) -> None:
        q_lora_rank = self.q_lora_rank
        if type(q_lora_rank) is int and q_lora_rank == 0:
            q_lora_rank = None  # HF configs write 0 or null for "no query compression"
        self._set(
            attention_type=choice("attention_type", self.attention_type, ATTENTION_TYPES),
            num_attention_heads=integer("num_attention_heads", self.num_attention_heads, minimum=1),
            num_key_value_heads=integer("num_key_value_heads", self.num_key_value_heads, minimum=1, optional=True),
            head_dim=integer("head_dim", self.head_dim, minimum=1, optional=True),
            q_lora_rank=integer("q_lora_rank", q_lora_rank, minimum=1, optional=True),
            kv_lora_rank=integer("kv_lora_rank", self.kv_lora_rank, minimum=1),
            qk_nope_head_dim=integer("qk_nope_head_dim", self.qk_nope_head_dim, minimum=1),
            qk_rope_head_dim=integer("qk_rope_head_dim", self.qk_rope_head_dim, minimum=0),
            v_head_dim=integer("v_head_dim", self.v_head_dim, minimum=1),
            attention_bias=boolean("attention_bias", self.attention_bias),
        )
        rope = self.qk_rope_head_dim
        if self.attention_type == "mla":  # MLA rotates the d^R_h dims of q^R and k^R, in pairs
            require(rope > 0 and rope % 2 == 0,
                    f"qk_rope_head_dim ({rope}) must be a positive even integer: MLA's decoupled RoPE "
                    "(DeepSeek-V2 §2.1.3) rotates pairs of dims")
        if self.head_dim is not None:
            require(self.head_dim % 2 == 0, f"head_dim ({self.head_dim}) must be a positive even integer: the "
                                            "baseline turns its whole head with RoPE, in pairs")
        elif self.attention_type == "mha":
            require((self.qk_nope_head_dim + rope) % 2 == 0,
                    f"qk_nope_head_dim + qk_rope_head_dim ({self.qk_nope_head_dim} + {rope}) must be even: with "
                    "head_dim=None the baseline head is that wide and RoPE turns it in pairs")
        if self.num_key_value_heads is not None:
            require(self.num_attention_heads % self.num_key_value_heads == 0,
                    f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                    f"num_key_value_heads ({self.num_key_value_heads})")


@dataclass(frozen=True)
class RopeConfig(_Part):
    """Rotary position embedding and its YaRN extension (DeepSeek-V2 §3.1.4, DeepSeek-V3 §4.3)."""

    rope_theta: float
    """The base of θ_i = base^(−2i/d)."""
    rope_interleave: bool
    """True: DeepSeek's interleaved pairs (x_2i, x_2i+1); False: rotate-half pairs (x_i, x_i+d/2)."""
    rope_scaling: dict[str, Any] | None
    """None, or HF's form {"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast",
    "beta_slow", "mscale", "mscale_all_dim", …} (the keys of ``YARN_KEYS``)."""

    def __post_init__(self) -> None:
        self._set(rope_theta=real("rope_theta", self.rope_theta, positive=True),
                  rope_interleave=boolean("rope_interleave", self.rope_interleave))
        check_rope_scaling(self.rope_scaling)


def check_rope_scaling(scaling: Any) -> None:
    """Raise naming the key (``rope_scaling['factor']`` …) when ``scaling`` is not None, default or valid YaRN."""
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise ConfigTypeError(f"rope_scaling must be a dict or None, got {scaling!r} ({type(scaling).__name__})")
    kind = scaling.get("type", scaling.get("rope_type"))
    require(kind in ("yarn", "default", None), f"rope_scaling type ({kind!r}) must be 'yarn' (or 'default')")
    if kind != "yarn":
        return
    unknown = sorted(set(scaling) - {"type", "rope_type", *YARN_KEYS})
    require(not unknown, f"rope_scaling has unknown YaRN key(s) {unknown}; known: {YARN_KEYS}")
    key = "rope_scaling[{!r}]".format
    real(key("factor"), scaling.get("factor"), minimum=1)
    integer(key("original_max_position_embeddings"), scaling.get("original_max_position_embeddings"), minimum=1)
    for name in ("beta_fast", "beta_slow", "attention_factor"):
        real(key(name), scaling.get(name), positive=True, optional=True)
    for name in ("mscale", "mscale_all_dim"):
        real(key(name), scaling.get(name), minimum=0, optional=True)
    boolean(key("truncate"), scaling.get("truncate"), optional=True)


@dataclass(frozen=True)
class MoEConfig(_Part):
    """DeepSeekMoE (DeepSeek-V2 §2.2, DeepSeek-V3 §2.1.2): shared and routed experts, top-k and group routing."""

    n_routed_experts: int
    """N_r (0 = a dense model: every layer keeps the SwiGLU FFN)."""
    n_shared_experts: int
    """N_s, experts every token uses."""
    num_experts_per_tok: int
    """K_r, routed experts per token."""
    moe_intermediate_size: int
    """The width of one expert."""
    first_k_dense_replace: int
    """The first layers keep a dense FFN (V3: 3)."""
    moe_layer_freq: int
    """After those, an MoE layer every this many layers."""
    n_group: int
    """Expert groups M (devices in V2 §2.2.2, nodes in V3 §2.1.2); 1 = no group-limited routing."""
    topk_group: int
    """Groups a token may route to."""
    topk_method: str
    """"greedy" | "group_limited_greedy" (V2) | "noaux_tc" (V3: selection bias, groups scored by their top-2)."""
    scoring_func: str
    """s_{i,t}: "softmax" (DeepSeek-V2 Eq. (22)) | "sigmoid" (DeepSeek-V3 Eq. (15))."""
    norm_topk_prob: bool
    """Renormalise the selected gate values to sum to 1 (V3 Eq. (13); True in V3)."""
    routed_scaling_factor: float
    """Multiplies g_{i,t} (V2: 16.0, V3: 2.5); finite and positive."""

    def __post_init__(self) -> None:
        self._set(
            n_routed_experts=integer("n_routed_experts", self.n_routed_experts, minimum=0),
            n_shared_experts=integer("n_shared_experts", self.n_shared_experts, minimum=0),
            num_experts_per_tok=integer("num_experts_per_tok", self.num_experts_per_tok),
            moe_intermediate_size=integer("moe_intermediate_size", self.moe_intermediate_size),
            first_k_dense_replace=integer("first_k_dense_replace", self.first_k_dense_replace, minimum=0),
            moe_layer_freq=integer("moe_layer_freq", self.moe_layer_freq, minimum=1),
            n_group=integer("n_group", self.n_group),
            topk_group=integer("topk_group", self.topk_group),
            topk_method=choice("topk_method", self.topk_method, TOPK_METHODS),
            scoring_func=choice("scoring_func", self.scoring_func, SCORING_FUNCS),
            norm_topk_prob=boolean("norm_topk_prob", self.norm_topk_prob),
            routed_scaling_factor=real("routed_scaling_factor", self.routed_scaling_factor, positive=True),
        )
        if self.n_routed_experts == 0:
            return  # a dense model reads none of the routing sizes
        E, K = self.n_routed_experts, self.num_experts_per_tok
        require(self.moe_intermediate_size > 0,
                f"moe_intermediate_size ({self.moe_intermediate_size}) must be a positive integer")
        require(K > 0, f"num_experts_per_tok ({K}) must be positive")
        require(K <= E, f"num_experts_per_tok ({K}) must be <= n_routed_experts ({E})")
        require(self.n_group > 0, f"n_group ({self.n_group}) must be positive")
        require(E % self.n_group == 0, f"n_routed_experts ({E}) must be divisible by n_group ({self.n_group})")
        require(0 < self.topk_group <= self.n_group,
                f"topk_group ({self.topk_group}) must be between 1 and n_group ({self.n_group})")
        per_group = E // self.n_group
        require(K <= self.topk_group * per_group,
                f"num_experts_per_tok ({K}) must be <= topk_group * experts per group "
                f"({self.topk_group} * {per_group}): the kept groups must hold enough experts")
        if self.topk_method == "noaux_tc" and self.n_group > 1:
            require(per_group >= 2, f"noaux_tc scores a group by its top-2 experts: n_routed_experts / n_group "
                                    f"({per_group}) must be >= 2")


@dataclass(frozen=True)
class BalanceConfig(_Part):
    """Load balancing during training; the model config is the only place these live (train and GRPO read them).

    ``Transformer.forward`` turns ``aux_loss_alpha`` and ``seq_aux`` into ``ModelOutput.aux_loss``;
    ``model.update_routing_bias`` applies ``bias_update_speed``. Change them for a run with ``cfg.replace(...)``.
    """

    aux_loss_alpha: float
    """α of the balance loss (DeepSeek-V2 α_1, Eq. (23)–(25); DeepSeek-V3 α, Eq. (17)–(20)); 0 = no loss."""
    seq_aux: bool
    """True: f_i, P_i per sequence, as both papers define them (V2 Eq. (24)–(25), V3 Eq. (18)–(20)); False: over
    the whole batch (the batch-wise variant of V3 §4.5.3)."""
    bias_update_speed: float
    """γ of the auxiliary-loss-free bias update (V3 §2.1.2; 0 = off); only ``noaux_tc`` routing has a bias."""

    def __post_init__(self) -> None:
        self._set(aux_loss_alpha=real("aux_loss_alpha", self.aux_loss_alpha, minimum=0),
                  seq_aux=boolean("seq_aux", self.seq_aux),
                  bias_update_speed=real("bias_update_speed", self.bias_update_speed, minimum=0))


@dataclass(frozen=True)
class MTPConfig(_Part):
    """Multi-token prediction (DeepSeek-V3 §2.2): D sequential modules after the main model, each predicting one
    token further ahead; they share the embedding and the output head and are dropped (or used to draft tokens for
    speculative decoding) at inference. ``Transformer.forward`` adds ``mtp_loss_weight · L_MTP`` to ``aux_loss``.
    """

    num_nextn_predict_layers: int
    """D, the number of MTP modules (transformers' and DeepSeek's name; released V3: 1; 0 = no MTP)."""
    mtp_loss_weight: float
    """λ of Eq. (25), L_MTP = (λ/D) Σ_k CE_k (V3: 0.3 for the first 10T tokens, then 0.1)."""

    def __post_init__(self) -> None:
        self._set(num_nextn_predict_layers=integer("num_nextn_predict_layers", self.num_nextn_predict_layers,
                                                   minimum=0),
                  mtp_loss_weight=real("mtp_loss_weight", self.mtp_loss_weight, minimum=0))


PARTS = (AttentionConfig, RopeConfig, MoEConfig, BalanceConfig, MTPConfig)
