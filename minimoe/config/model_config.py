"""ModelConfig: every hyper-parameter of a model in the kit, declared once, documented and checked where declared.

Field names follow DeepSeek's Hugging Face configs (``kv_lora_rank``, ``n_routed_experts``, ``num_experts_per_tok``
…) so a reader can put our code beside the official one and ``interop`` can map a transformers config field by
field. The docstring under each field gives its meaning and symbol; ``validate`` checks them group by group
(sizes, attention, RoPE, DeepSeekMoE, balancing, MTP) when the config is created, so a bad value fails at once,
naming its field. What follows from the fields (``qk_head_dim``, ``is_moe``, ``routing_scheme``,
``router_has_bias`` …) is a property, never a second field.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from minimoe.config.checks import ConfigTypeError, boolean, choice, integer, real, require, text
from minimoe.config.presets import PRESETS
from minimoe.config.routing import ROUTING_SCHEMES, RoutingScheme

ATTENTION_TYPES = ("mla", "mha")
SCORING_FUNCS = ("softmax", "sigmoid")
YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
             "attention_factor", "truncate")


@dataclass
class ModelConfig:
    """Hyper-parameters of a DeepSeek-style causal language model.

    An invalid value raises ``ValueError`` naming the field and the rule; a value of the wrong type (``True`` or
    ``2.5`` for an integer, ``None`` or a string for a number) raises ``ConfigTypeError``, also a ``ValueError``.
    Change fields with ``cfg.replace(...)`` (validated again).
    """

    # ------------------------------------------------------------------------------------------------- sizes
    vocab_size: int = 128
    """V, the vocabulary."""
    hidden_size: int = 64
    """d, the model width."""
    intermediate_size: int = 128
    """The width of the dense SwiGLU FFN (the first ``first_k_dense_replace`` layers, or every layer when dense)."""
    num_hidden_layers: int = 2
    """l, the number of blocks."""
    num_attention_heads: int = 4
    """n_h, query heads."""
    max_position_embeddings: int = 256
    """The longest sequence (cached + new positions) a forward accepts."""
    # ------------------------------------------------------------- attention (DeepSeek-V2 §2.1.2–2.1.3; chapter 1)
    attention_type: str = "mla"
    """"mla" (DeepSeek) or "mha" (the baseline: MHA, GQA or MQA through ``num_key_value_heads``)."""
    num_key_value_heads: int | None = None
    """Baseline only: n_g key/value heads (None = n_h, i.e. MHA; 1 = MQA)."""
    head_dim: int | None = None
    """Baseline only: d_h (None = qk_nope_head_dim + qk_rope_head_dim, the MLA query/key width)."""
    q_lora_rank: int | None = None
    """d'_c, the query latent (DeepSeek-V2 Eq. (12)); None (or 0 in HF configs) = one W^Q, no compression."""
    kv_lora_rank: int = 32
    """d_c, the key/value latent that the cache stores (DeepSeek-V2 Eq. (9))."""
    qk_nope_head_dim: int = 16
    """d_h, the per-head query/key width without RoPE."""
    qk_rope_head_dim: int = 8
    """d^R_h, the decoupled RoPE width (DeepSeek-V2 §2.1.3); RoPE turns pairs of dims, so even and, for MLA, > 0."""
    v_head_dim: int = 16
    """Per-head value width."""
    attention_bias: bool = False
    """Biases on the attention projections (False in every DeepSeek config)."""
    # ------------------------------------------------------- rotary position embedding (V2 §3.1.4, V3 §4.3: YaRN)
    rope_theta: float = 10000.0
    """The base of θ_i = base^(−2i/d)."""
    rope_interleave: bool = True
    """True: DeepSeek's interleaved pairs (x_2i, x_2i+1); False: rotate-half pairs (x_i, x_i+d/2)."""
    rope_scaling: dict[str, Any] | None = None
    """None, or HF's form {"type": "yarn", "factor", "original_max_position_embeddings", "beta_fast",
    "beta_slow", "mscale", "mscale_all_dim", …} (the keys of ``YARN_KEYS``)."""
    # ------------------------------------------------------------- DeepSeekMoE (DeepSeek-V2 §2.2, DeepSeek-V3 §2.1.2)
    n_routed_experts: int = 0
    """N_r (0 = a dense model: every layer keeps the SwiGLU FFN)."""
    n_shared_experts: int = 0
    """N_s, experts every token uses."""
    num_experts_per_tok: int = 2
    """K_r, routed experts per token."""
    moe_intermediate_size: int = 32
    """The width of one expert."""
    first_k_dense_replace: int = 0
    """The first layers keep a dense FFN (V3: 3)."""
    moe_layer_freq: int = 1
    """After those, an MoE layer every this many layers."""
    n_group: int = 1
    """Expert groups M (devices in V2 §2.2.2, nodes in V3 §2.1.2); 1 = no group-limited routing."""
    topk_group: int = 1
    """Groups a token may route to."""
    topk_method: str = "greedy"
    """The routing scheme, a key of ``ROUTING_SCHEMES``: "greedy" | "group_limited_greedy" (V2) | "noaux_tc" (V3:
    selection bias, groups scored by their top-2)."""
    scoring_func: str = "softmax"
    """s_{i,t}: "softmax" (DeepSeek-V2 Eq. (22)) | "sigmoid" (DeepSeek-V3 Eq. (15))."""
    norm_topk_prob: bool = False
    """Renormalise the selected gate values to sum to 1 (V3 Eq. (13); True in V3)."""
    routed_scaling_factor: float = 1.0
    """Multiplies g_{i,t} (V2: 16.0, V3: 2.5); finite and positive."""
    # --------------------------------------------------- load balancing during training (train and GRPO read these)
    aux_loss_alpha: float = 0.0
    """α of the balance loss (DeepSeek-V2 α_1, Eq. (23)–(25); DeepSeek-V3 α, Eq. (17)–(20)); 0 = no loss."""
    seq_aux: bool = False
    """True: f_i, P_i per sequence, as both papers define them (V2 Eq. (24)–(25), V3 Eq. (18)–(20)); False: over
    the whole batch (the batch-wise variant of V3 §4.5.3)."""
    bias_update_speed: float = 0.0
    """γ of the auxiliary-loss-free bias update (V3 §2.1.2; 0 = off); only a scheme with a selection bias has one."""
    # ---------------------------------------------------------------------- multi-token prediction (DeepSeek-V3 §2.2)
    num_nextn_predict_layers: int = 0
    """D, the number of MTP modules (transformers' and DeepSeek's name; released V3: 1; 0 = no MTP)."""
    mtp_loss_weight: float = 0.3
    """λ of Eq. (25), L_MTP = (λ/D) Σ_k CE_k (V3: 0.3 for the first 10T tokens, then 0.1)."""
    # --------------------------------------------------------------------------------------------------- misc
    rms_norm_eps: float = 1e-6
    """ε of every RMSNorm but MLA's two latent norms (which DeepSeek fixes at 1e-6)."""
    initializer_range: float = 0.02
    """The standard deviation of the normal initialisation of every weight."""
    tie_word_embeddings: bool = False
    """The output head shares the embedding's weight."""
    name: str = field(default="custom", compare=False)
    """The preset it came from, for display."""

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------- derived
    @property
    def qk_head_dim(self) -> int:
        """Width of one query/key head in MLA: d_h + d^R_h (192 in DeepSeek-V2/V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def n_kv_heads(self) -> int:
        """n_g of the baseline (n_h for MHA)."""
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def baseline_head_dim(self) -> int:
        """d_h of the baseline."""
        return self.head_dim or self.qk_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, layer_idx: int) -> bool:
        """DeepSeek's rule: dense for the first ``first_k_dense_replace`` layers, then MoE every ``moe_layer_freq``."""
        return self.is_moe and layer_idx >= self.first_k_dense_replace and layer_idx % self.moe_layer_freq == 0

    @property
    def routing_scheme(self) -> RoutingScheme:
        """The entry of ``ROUTING_SCHEMES`` that ``topk_method`` names."""
        return ROUTING_SCHEMES[self.topk_method]

    @property
    def router_has_bias(self) -> bool:
        """Whether each MoE layer's router holds a selection bias b (DeepSeek-V3 Eq. (16)): its scheme selects with
        one (``noaux_tc``)."""
        return self.is_moe and self.routing_scheme.selection_bias

    # ----------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every field's type and rule, naming the field; store normalised values (``int``, ``float``)."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "max_position_embeddings"):
            setattr(self, name, integer(name, getattr(self, name), minimum=1))
        self._check_attention()
        self.rope_theta = real("rope_theta", self.rope_theta, positive=True)
        self.rope_interleave = boolean("rope_interleave", self.rope_interleave)
        check_rope_scaling(self.rope_scaling)
        self._check_moe()
        self.aux_loss_alpha = real("aux_loss_alpha", self.aux_loss_alpha, minimum=0)
        self.seq_aux = boolean("seq_aux", self.seq_aux)
        self.bias_update_speed = real("bias_update_speed", self.bias_update_speed, minimum=0)
        self.num_nextn_predict_layers = integer("num_nextn_predict_layers", self.num_nextn_predict_layers, minimum=0)
        self.mtp_loss_weight = real("mtp_loss_weight", self.mtp_loss_weight, minimum=0)
        self.rms_norm_eps = real("rms_norm_eps", self.rms_norm_eps, positive=True)
        self.initializer_range = real("initializer_range", self.initializer_range, minimum=0)
        self.tie_word_embeddings = boolean("tie_word_embeddings", self.tie_word_embeddings)
        self.name = text("name", self.name)

    def _check_attention(self) -> None:
        if type(self.q_lora_rank) is int and self.q_lora_rank == 0:
            self.q_lora_rank = None  # HF configs write 0 or null for "no query compression"
        self.attention_type = choice("attention_type", self.attention_type, ATTENTION_TYPES)
        self.num_key_value_heads = integer("num_key_value_heads", self.num_key_value_heads, minimum=1, optional=True)
        self.head_dim = integer("head_dim", self.head_dim, minimum=1, optional=True)
        self.q_lora_rank = integer("q_lora_rank", self.q_lora_rank, minimum=1, optional=True)
        for name in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            setattr(self, name, integer(name, getattr(self, name), minimum=1))
        self.qk_rope_head_dim = rope = integer("qk_rope_head_dim", self.qk_rope_head_dim, minimum=0)
        self.attention_bias = boolean("attention_bias", self.attention_bias)
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

    def _check_moe(self) -> None:
        for name, minimum in (("n_routed_experts", 0), ("n_shared_experts", 0), ("num_experts_per_tok", None),
                              ("moe_intermediate_size", None), ("first_k_dense_replace", 0), ("moe_layer_freq", 1),
                              ("n_group", None), ("topk_group", None)):
            setattr(self, name, integer(name, getattr(self, name), minimum=minimum))
        self.topk_method = choice("topk_method", self.topk_method, tuple(ROUTING_SCHEMES))
        self.scoring_func = choice("scoring_func", self.scoring_func, SCORING_FUNCS)
        self.norm_topk_prob = boolean("norm_topk_prob", self.norm_topk_prob)
        self.routed_scaling_factor = real("routed_scaling_factor", self.routed_scaling_factor, positive=True)
        if not self.is_moe:
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
        if self.routing_scheme.group_score == "top2" and self.n_group > 1:
            require(per_group >= 2, f"{self.topk_method} scores a group by its top-2 experts: n_routed_experts / "
                                    f"n_group ({per_group}) must be >= 2")

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
