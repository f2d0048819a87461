"""Accounting: parameters, KV cache, FLOPs and training cost, from a config alone.

Nothing here allocates a weight: every count is a formula over ``ModelConfig`` fields, so DeepSeek-V3's 671B
parameters are counted in microseconds. The parameter formulas follow the architecture of DeepSeek-V2 §2 and
DeepSeek-V3 §2 with the dimensions of DeepSeek-V2 §3.1.2 and DeepSeek-V3 §4.2; the KV cache per token is
DeepSeek-V2 Table 1 and the training cost DeepSeek-V3 Table 1 (the book's Sources appendix lists each figure).
The tests check them against the published totals and against ``sum(p.numel() for p in Transformer(cfg).parameters())`` for the teaching presets.
"""

from __future__ import annotations

from dataclasses import dataclass

from minimoe.config import ModelConfig

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla", "mla_naive")


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of a model, split by component.

    ``total`` is what the checkpoint holds (the router bias of ``noaux_tc`` included: a float32 buffer in
    ``minimoe.moe.gate.Router``, a parameter-like tensor in the checkpoint). ``active`` is what one token uses,
    every routed expert it is not sent to is left out, and so is the input embedding, which is a table lookup, not
    a matmul. The papers do not say how they count activated parameters; leaving the input embedding out is our
    inference, the convention under which V2's and V3's counts round to the published 21B and 37B (V2-Lite gives
    2.451B where DeepSeek-V2 App. B.1 says 2.4B). ``active_with_embedding`` adds the embedding back.
    ``moe_routed`` holds all routed experts; ``moe_routed_active`` the K a token uses in every MoE layer.
    ``norms`` counts every RMSNorm weight: two per block, the final norm, and MLA's ``q_norm`` and ``kv_norm``.

    The multi-token prediction modules (``num_nextn_predict_layers`` = D, DeepSeek-V3 §2.2) are counted apart and
    left out of ``total`` and ``active``, which describe the main model (the one that serves requests): ``mtp`` is
    what they add to ``Transformer(cfg)``, which shares the embedding and the head; ``mtp_copies`` is the copy of
    the embedding and of the head that DeepSeek's checkpoint stores with every MTP module. ``checkpoint_total`` =
    ``total + mtp + mtp_copies`` is the parameters of the released files; the Hub's "685B" also counts the float32
    block scales stored beside every FP8 weight (``fp8_weight_scales``).
    """

    embedding: int
    head: int
    attention: int
    dense_ffn: int
    moe_routed: int
    moe_routed_active: int
    moe_shared: int
    moe_router: int
    router_bias: int
    norms: int
    mtp: int = 0
    mtp_copies: int = 0

    @property
    def total_with_mtp(self) -> int:
        """The main model and its MTP modules: ``sum(p.numel() for p in Transformer(cfg).parameters())``."""
        return self.total + self.mtp

    @property
    def checkpoint_total(self) -> int:
        """The released checkpoint: main model, MTP modules, and the MTP modules' copies of embedding and head."""
        return self.total + self.mtp + self.mtp_copies

    @property
    def total(self) -> int:
        return (self.embedding + self.head + self.attention + self.dense_ffn + self.moe_routed + self.moe_shared
                + self.moe_router + self.router_bias + self.norms)

    @property
    def active_with_embedding(self) -> int:
        return self.total - self.moe_routed + self.moe_routed_active

    @property
    def active(self) -> int:
        return self.active_with_embedding - self.embedding

    @property
    def matmul_active(self) -> int:
        """Active weights of the matrix products (no norms, no router bias): the N of the FLOP count.

        Attention biases, if ``attention_bias`` is set, stay in (one add each instead of a multiply-add; DeepSeek's
        configs have none).
        """
        return self.active - self.norms - self.router_bias


def _attention_params(cfg: ModelConfig) -> tuple[int, int]:
    """(projection weights and biases, norm weights) of one attention layer (DeepSeek-V2 §2.1.2–2.1.3).

    Biases follow ``attention_bias`` as in Hugging Face's DeepseekV3Attention: on ``wq_a``, ``wkv_a`` and ``wo`` for
    MLA, on all four projections for the baseline. DeepSeek's configs have none.
    """
    d, n_h, bias = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_bias
    if cfg.attention_type == "mha":
        d_h, n_kv = cfg.baseline_head_dim, cfg.n_kv_heads
        biases = (n_h * d_h + 2 * n_kv * d_h + d) if bias else 0  # wq, wk, wv, wo
        return 2 * d * n_h * d_h + 2 * d * n_kv * d_h + biases, 0  # W^Q, W^O; W^K, W^V
    n, r, v, d_c = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    if cfg.q_lora_rank is None:
        w_q, q_norm = d * n_h * (n + r), 0  # W^Q
    else:
        w_q, q_norm = d * cfg.q_lora_rank + cfg.q_lora_rank * n_h * (n + r), cfg.q_lora_rank  # W^DQ, [W^UQ; W^QR]
    w_kv = d * (d_c + r) + d_c * n_h * (n + v)  # [W^DKV; W^KR], [W^UK; W^UV]
    w_o = n_h * v * d  # W^O
    biases = ((cfg.q_lora_rank or 0) + d_c + r + d) if bias else 0  # wq_a, wkv_a, wo
    return w_q + w_kv + w_o + biases, q_norm + d_c


def count_params(cfg: ModelConfig) -> ParamCount:
    """Count a model's parameters from its config, without allocating them.

    Per layer: attention (MLA, or the MHA/GQA/MQA baseline), two RMSNorms, and either a dense SwiGLU FFN of
    ``3·d·inter`` weights or a DeepSeekMoE layer: router ``E·d`` (+ ``E`` bias for ``noaux_tc``), ``E`` routed and
    ``S`` shared experts of ``3·d·moe_inter`` each. Plus embedding ``V·d``, final norm ``d`` and head ``V·d``
    (counted once when tied). DeepSeek-V2 §3.1.2, DeepSeek-V3 §4.2.

    Each MTP module (DeepSeek-V3 §2.2, Eq. (21)–(23)) holds two input RMSNorms ``2·d``, ``M_k`` of ``2d·d``, one
    block of the last layer's type (attention, its norms, FFN) and the norm before the shared head ``d``.
    DeepSeek-V3 with D = 1 (its released config): attention 187,105,280 + M_k 2·7168² = 102,760,448 + MoE
    256·7168 + 256 + 257·3·7168·2048 = 11,320,164,608 + norms 5·7168 + 2048 = 37,888 gives ``mtp`` =
    11,610,068,224; the copies 2·129,280·7,168 = 1,853,358,080; the module as stored 13,463,426,304 ≈ 13.5B; the
    checkpoint 671,026,419,200 + 13,463,426,304 = 684,489,845,504 ≈ 684.5B. The Hub's 685B counts every stored
    tensor, the 41,540,496 float32 block scales of the FP8 weights included (``fp8_weight_scales``):
    684,489,845,504 + 41,540,496 = 684,531,386,000, which rounds to 685B. (The repository's ``README_WEIGHTS.md``
    gives the MTP module as 11.5B unique parameters: ``mtp`` less M_k's 102,760,448, i.e. 11.51B.)

    Shapes: returns counts of scalars (no tensors).
    """
    d, V = cfg.hidden_size, cfg.vocab_size
    attn_matmul, attn_norms = _attention_params(cfg)
    expert = 3 * d * cfg.moe_intermediate_size  # w1, w2, w3 of one SwiGLU expert
    n_moe = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    n_dense = cfg.num_hidden_layers - n_moe
    E, K, S = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts
    last = cfg.num_hidden_layers - 1  # an MTP block has the last layer's type
    if cfg.is_moe_layer(last):
        ffn = E * d + (E if cfg.router_has_bias else 0) + (E + S) * expert
    else:
        ffn = 3 * d * cfg.intermediate_size
    mtp_module = 2 * d + 2 * d * d + attn_matmul + 2 * d + attn_norms + ffn + d
    D = cfg.num_nextn_predict_layers
    return ParamCount(
        embedding=V * d,
        head=0 if cfg.tie_word_embeddings else V * d,
        attention=cfg.num_hidden_layers * attn_matmul,
        dense_ffn=n_dense * 3 * d * cfg.intermediate_size,
        moe_routed=n_moe * E * expert,
        moe_routed_active=n_moe * K * expert,
        moe_shared=n_moe * S * expert,
        moe_router=n_moe * E * d,
        router_bias=n_moe * E if cfg.router_has_bias else 0,
        norms=cfg.num_hidden_layers * (2 * d + attn_norms) + d,
        mtp=D * mtp_module,
        mtp_copies=D * 2 * V * d,
    )


def _linear_shapes(cfg: ModelConfig, moe_layer: bool) -> list[tuple[int, int]]:
    """(out, in) of every linear weight of one block: attention's projections, then the FFN's: every routed
    expert, and the shared experts as one MLP of width ``n_shared_experts·moe_intermediate_size``, as DeepSeek's
    checkpoints store them."""
    d, n_h = cfg.hidden_size, cfg.num_attention_heads
    if cfg.attention_type == "mha":
        d_h, n_kv = cfg.baseline_head_dim, cfg.n_kv_heads
        attn = [(n_h * d_h, d), (n_kv * d_h, d), (n_kv * d_h, d), (d, n_h * d_h)]  # wq, wk, wv, wo
    else:
        n, r, v, d_c, d_q = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.q_lora_rank
        w_q = [(n_h * (n + r), d)] if d_q is None else [(d_q, d), (n_h * (n + r), d_q)]  # W^Q, or W^DQ, [W^UQ; W^QR]
        attn = w_q + [(d_c + r, d), (n_h * (n + v), d_c), (d, n_h * v)]  # [W^DKV; W^KR], [W^UK; W^UV], W^O
    def swiglu(inter: int) -> list[tuple[int, int]]:
        return [(inter, d), (d, inter), (inter, d)]  # w1, w2, w3

    if not moe_layer:
        return attn + swiglu(cfg.intermediate_size)
    shared = swiglu(cfg.n_shared_experts * cfg.moe_intermediate_size) if cfg.n_shared_experts else []  # one MLP
    return attn + cfg.n_routed_experts * swiglu(cfg.moe_intermediate_size) + shared


def fp8_weight_scales(cfg: ModelConfig, block: int = 128) -> int:
    """The float32 scales an FP8 checkpoint stores beside its weights (``weight_scale_inv``): one per
    ``block``×``block`` block, ⌈out/block⌉·⌈in/block⌉ per weight (DeepSeek-V3 §3.3.2's 128×128 weight blocks).

    The FP8 weights are those of DeepSeek-V3's released checkpoint: the attention projections, dense FFNs and
    experts (routed and shared) of the main model and of its ``num_nextn_predict_layers`` MTP modules. The
    embedding, the output head, the routers, the norms and each MTP module's M_k (``eh_proj``) are stored in BF16
    and have no scales. DeepSeek-V3: 41,540,496 scales, and ``count_params(cfg).checkpoint_total`` + 41,540,496 =
    684,531,386,000, the Hub's "685B".

    Shapes: returns a count of scalars.
    """
    if not (isinstance(block, int) and block > 0):
        raise ValueError(f"block ({block!r}) must be a positive integer")

    def blocks(shapes: list[tuple[int, int]]) -> int:
        return sum(-(-out // block) * -(-inp // block) for out, inp in shapes)  # ceil division

    main = sum(blocks(_linear_shapes(cfg, cfg.is_moe_layer(i))) for i in range(cfg.num_hidden_layers))
    mtp = blocks(_linear_shapes(cfg, cfg.is_moe_layer(cfg.num_hidden_layers - 1)))  # a block of the last layer's type
    return main + cfg.num_nextn_predict_layers * mtp


def kv_cache_per_token(cfg: ModelConfig, attention: str = "mla", *, n_groups: int | None = None,
                       head_dim: int | None = None) -> int:
    """Cached elements per token over all layers, DeepSeek-V2 Table 1.

    ``"mha"`` 2·n_h·d_h·l, ``"gqa"`` 2·n_g·d_h·l (``n_groups``, default ``cfg.n_kv_heads``), ``"mqa"`` 2·d_h·l,
    ``"mla"`` (d_c + d^R_h)·l (the absorbed cache: ``c_kv`` and the shared ``k_rope``), and ``"mla_naive"``
    n_h·(d_h + d^R_h + d_v)·l (full keys and values re-expanded from the latent, DeepSeek-V3 ``attn_impl="naive"``).

    ``d_h`` follows the paper's Table 1 convention: the per-head width MLA is compared with, ``qk_nope_head_dim``
    (128 for DeepSeek, so d_c = 4·d_h and MLA equals GQA with 2.25 groups, DeepSeek-V2 §2.1.4). An explicit
    ``cfg.head_dim`` or the ``head_dim`` argument overrides it; the baseline ``MultiHeadAttention`` caches keys of
    ``cfg.baseline_head_dim``, so pass ``head_dim=cfg.baseline_head_dim`` to predict its cache exactly.

    Shapes: returns a count of elements for one token of one sequence.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention ({attention!r}) must be one of {ATTENTION_KINDS}")
    if n_groups is not None and attention != "gqa":
        raise ValueError(f"n_groups ({n_groups}) only applies to attention='gqa', not {attention!r}")
    n_g = cfg.n_kv_heads if n_groups is None else n_groups
    if not (isinstance(n_g, int) and n_g > 0):
        raise ValueError(f"n_groups ({n_g!r}) must be a positive integer")
    d_h = head_dim or cfg.head_dim or cfg.qk_nope_head_dim
    n_h, l = cfg.num_attention_heads, cfg.num_hidden_layers
    per_layer = {
        "mha": 2 * n_h * d_h,
        "gqa": 2 * n_g * d_h,
        "mqa": 2 * d_h,
        "mla": cfg.kv_lora_rank + cfg.qk_rope_head_dim,
        "mla_naive": n_h * (cfg.qk_head_dim + cfg.v_head_dim),
    }[attention]
    return per_layer * l


def kv_cache_bytes(cfg: ModelConfig, attention: str = "mla", *, n_tokens: int = 1, batch_size: int = 1,
                   bytes_per_element: float = 2, **kwargs: int | None) -> float:
    """Bytes of KV cache for ``batch_size`` sequences of ``n_tokens`` tokens (2 bytes = BF16, 1 = FP8).

    DeepSeek-V2 deployed a cache quantised to 6 bits per element on average (DeepSeek-V2 §3.2.3): ``bytes_per_element=0.75``.
    Further keyword arguments go to :func:`kv_cache_per_token`.

    Shapes: returns a number of bytes.
    """
    if bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element ({bytes_per_element}) must be positive")
    if n_tokens < 0 or batch_size < 0:
        raise ValueError(f"n_tokens ({n_tokens}) and batch_size ({batch_size}) must be non-negative")
    return kv_cache_per_token(cfg, attention, **kwargs) * n_tokens * batch_size * bytes_per_element


def attention_flops_per_token(cfg: ModelConfig, seq_len: int, *, causal: bool = True) -> int:
    """Forward FLOPs of the score and value products ``q·k`` and ``softmax·v`` per token, all layers.

    One query attending c keys costs 2·c·H·(d_qk + d_v) FLOPs per layer (a multiply and an add per element), with
    d_qk = d_h + d^R_h and d_v = v_head_dim for MLA in its paper form (DeepSeek-V2 Eq. (17)–(19)). Causal: token t
    of a sequence of length T attends t keys, and the mean of t over 1..T is (T + 1)/2.

    Shapes: returns a FLOP count per token.
    """
    if not (isinstance(seq_len, int) and seq_len > 0):
        raise ValueError(f"seq_len ({seq_len!r}) must be a positive integer")
    if cfg.attention_type == "mha":
        d_qk = d_v = cfg.baseline_head_dim
    else:
        d_qk, d_v = cfg.qk_head_dim, cfg.v_head_dim
    per_key = cfg.num_hidden_layers * cfg.num_attention_heads * (d_qk + d_v)
    return per_key * (seq_len + 1) if causal else 2 * per_key * seq_len


def flops_per_token(cfg: ModelConfig, seq_len: int = 4096, *, causal: bool = True) -> int:
    """Forward FLOPs per token: 2 × the active matmul weights + the attention products.

    The matmul weights are ``count_params(cfg).matmul_active`` (active weights less norms and router bias; the
    input embedding is a lookup and costs nothing). Element-wise work (norms, SwiGLU, softmax, RoPE) is left
    out, as in the usual ``6N`` estimates; training costs about 3× this (the backward pass is about 2×).

    Shapes: returns a FLOP count per token.
    """
    return 2 * count_params(cfg).matmul_active + attention_flops_per_token(cfg, seq_len, causal=causal)


# DeepSeek-V3 Table 1 and §1 ("Training costs"): H800 GPU-hours per stage, the assumed rental price, the tokens of
# pre-training, the cost per trillion tokens and the cluster size. These are the published inputs; the dollar
# amounts, totals and durations below are computed from them.
V3_GPU_HOURS = {"pre-training": 2_664_000, "context extension": 119_000, "post-training": 5_000}
V3_USD_PER_GPU_HOUR = 2.0
V3_PRETRAINING_TOKENS = 14_800_000_000_000
V3_GPU_HOURS_PER_TRILLION_TOKENS = 180_000
V3_CLUSTER_GPUS = 2048


@dataclass(frozen=True)
class CostRow:
    """One stage of a training budget: GPU-hours and their rental price in US dollars."""

    stage: str
    gpu_hours: float
    usd: float


def training_cost(gpu_hours: dict[str, float] | None = None,
                  usd_per_gpu_hour: float = V3_USD_PER_GPU_HOUR) -> list[CostRow]:
    """DeepSeek-V3 Table 1: each stage's GPU-hours × the hourly price, and a final ``"total"`` row.

    With the defaults: 2664K + 119K + 5K = 2788K H800 GPU-hours, $5.328M + $0.238M + $0.01M = $5.576M.

    Shapes: returns one ``CostRow`` per stage, then the total.
    """
    gpu_hours = V3_GPU_HOURS if gpu_hours is None else gpu_hours
    if usd_per_gpu_hour < 0 or any(h < 0 for h in gpu_hours.values()):
        raise ValueError("gpu_hours and usd_per_gpu_hour must be non-negative")
    rows = [CostRow(stage, hours, hours * usd_per_gpu_hour) for stage, hours in gpu_hours.items()]
    total_hours = sum(r.gpu_hours for r in rows)
    return rows + [CostRow("total", total_hours, total_hours * usd_per_gpu_hour)]


def pretraining_gpu_hours(n_tokens: int = V3_PRETRAINING_TOKENS,
                          gpu_hours_per_trillion: float = V3_GPU_HOURS_PER_TRILLION_TOKENS) -> float:
    """GPU-hours to pre-train on ``n_tokens`` at a fixed cost per trillion tokens (14.8T × 180K = 2664K).

    Shapes: returns GPU-hours.
    """
    return n_tokens * gpu_hours_per_trillion / 10**12


def wall_clock_days(gpu_hours: float = V3_GPU_HOURS_PER_TRILLION_TOKENS, n_gpus: int = V3_CLUSTER_GPUS) -> float:
    """Days a cluster of ``n_gpus`` needs for ``gpu_hours`` (180K GPU-hours on 2048 GPUs ≈ 3.7 days).

    Shapes: returns days.
    """
    if n_gpus <= 0:
        raise ValueError(f"n_gpus ({n_gpus}) must be positive")
    return gpu_hours / n_gpus / 24
