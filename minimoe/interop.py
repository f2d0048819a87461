"""Hugging Face interop: DeepSeek-V2/V3 checkpoints from ``transformers`` into minimoe, and back.

minimoe keeps the parameter layouts of DeepSeek-V3's ``inference/model.py``, which are also those of
``transformers`` (facts sheet §1.1 "Code ↔ paper names"), so importing a model renames tensors and, for the
routed experts, unpacks ``transformers``' 3-D ``gate_up_proj`` / ``down_proj`` stacks into one SwiGLU per expert.
Nothing is permuted: the RoPE pair layout is a config flag (``rope_interleave``) that both implementations honour.

Semantics follow the ``transformers`` classes, which differ slightly from DeepSeek's own configs:
``DeepseekV2ForCausalLM`` always uses interleaved RoPE, softmax scores and never renormalises the top-k weights;
``DeepseekV3ForCausalLM`` always routes with sigmoid scores and ``noaux_tc``; both put an MoE in every layer from
``first_k_dense_replace`` on (``moe_layer_freq`` is not read). A config outside what both sides can represent
raises ``ValueError`` naming the field and its value. ``transformers`` is imported only inside the functions.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from minimoe.config import ModelConfig

# transformers name -> minimoe name, inside one layer (facts sheet §1.1, DeepSeek-V3 inference/model.py)
_ATTN_NAMES = {"q_proj": "wq", "q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
               "kv_a_proj_with_mqa": "wkv_a", "kv_a_layernorm": "kv_norm", "kv_b_proj": "wkv_b", "o_proj": "wo"}
_MLP_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}  # SwiGLU: w2(silu(w1 x) * w3 x)
_TOP_LEVEL = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "head.weight"}
_ROUTING = {"deepseek_v2": (("greedy", "group_limited_greedy"), "softmax"), "deepseek_v3": (("noaux_tc",), "sigmoid")}
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor", "truncate")


def _unsupported(field: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"unsupported Hugging Face config: {field} ({value!r}) {rule}")


def _required(hf_config: Any, name: str) -> Any:
    value = getattr(hf_config, name, None)
    if value is None:
        raise _unsupported(name, value, "is missing; minimoe needs it to build the model")
    return value


def _rope_scaling_from_hf(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from ``rope_parameters`` (transformers 5) or ``rope_scaling`` + ``rope_theta`` (4.x).

    The YaRN keys pass through unchanged: ``minimoe.attention.rope`` reads them as transformers'
    ``_compute_yarn_parameters`` and ``yarn_apply_mscale`` do.
    """
    params = dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})
    theta = params.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
    kind = params.pop("rope_type", None) or params.get("type") or "default"
    params.pop("type", None)
    if kind == "default":
        return float(theta), None
    if kind != "yarn":
        raise _unsupported("rope_parameters rope_type", kind, "must be 'default' or 'yarn'")
    partial = params.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise _unsupported("rope_parameters['partial_rotary_factor']", partial,
                           "must be 1.0 (MLA rotates all qk_rope_head_dim dims)")
    unknown = sorted(set(params) - set(_YARN_KEYS))
    if unknown:
        raise _unsupported(f"rope_parameters[{unknown[0]!r}]", params[unknown[0]], "is not a YaRN key minimoe reads")
    scaling = {"type": "yarn", **{k: v for k, v in params.items() if v is not None}}
    if "original_max_position_embeddings" not in scaling:
        raise _unsupported("rope_parameters['original_max_position_embeddings']", None, "is missing for YaRN")
    # transformers' rule when factor is unset: the ratio of the extended to the original context
    scaling.setdefault("factor", hf_config.max_position_embeddings / scaling["original_max_position_embeddings"])
    return float(theta), scaling


def config_from_hf(hf_config: Any) -> ModelConfig:
    """A ``ModelConfig`` equal in behaviour to a transformers ``DeepseekV2Config`` or ``DeepseekV3Config``.

    Raises ``ValueError`` naming the field for anything the converter cannot represent: another ``model_type``, a
    routing method or scoring function the class does not implement, ``moe_layer_freq`` other than 1, a RoPE type
    other than default/YaRN, biases in the MLPs, an activation other than SiLU, or a missing size. The V3 selection
    bias ``e_score_correction_bias`` is a weight, not a config field: ``from_hf`` copies it.
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in _ROUTING:
        raise _unsupported("model_type", model_type, f"must be one of {sorted(_ROUTING)}")
    methods, scoring = _ROUTING[model_type]
    topk_method = getattr(hf_config, "topk_method", None) or methods[0]
    if topk_method not in methods:
        raise _unsupported("topk_method", topk_method, f"must be one of {methods} for {model_type}")
    scoring_func = getattr(hf_config, "scoring_func", None) or scoring
    if scoring_func != scoring:
        raise _unsupported("scoring_func", scoring_func, f"must be {scoring!r} for {model_type}")
    checks = [("hidden_act", "silu"), ("moe_layer_freq", 1), ("mlp_bias", False)]
    for name, expected in checks:
        value = getattr(hf_config, name, expected)
        if value != expected and value is not None:
            raise _unsupported(name, value, f"must be {expected!r}")
    if model_type == "deepseek_v2" and getattr(hf_config, "norm_topk_prob", False):
        raise _unsupported("norm_topk_prob", True, "is ignored by transformers' DeepseekV2TopkRouter; set it False")
    grouped = topk_method != "greedy"
    rope_theta, rope_scaling = _rope_scaling_from_hf(hf_config)
    # num_key_value_heads is not read: MLA expands its latent to num_attention_heads keys (transformers ignores it)
    sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings",
             "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
             "num_experts_per_tok", "moe_intermediate_size", "rms_norm_eps"]
    values = {name: _required(hf_config, name) for name in sizes}
    first_dense = getattr(hf_config, "first_k_dense_replace", None) or 0
    if first_dense >= values["num_hidden_layers"]:  # every layer dense: minimoe's dense form
        values["n_routed_experts"], first_dense = 0, 0
    elif values["n_routed_experts"] <= 0:
        raise _unsupported("n_routed_experts", values["n_routed_experts"], "must be positive when "
                           "first_k_dense_replace < num_hidden_layers (those layers are MoE)")
    return ModelConfig(
        **values,
        q_lora_rank=getattr(hf_config, "q_lora_rank", None),
        rope_theta=rope_theta,
        rope_interleave=model_type == "deepseek_v2" or bool(getattr(hf_config, "rope_interleave", True)),
        rope_scaling=rope_scaling,
        attention_bias=bool(getattr(hf_config, "attention_bias", False)),
        n_shared_experts=getattr(hf_config, "n_shared_experts", None) or 0,
        first_k_dense_replace=first_dense,
        n_group=_required(hf_config, "n_group") if grouped else getattr(hf_config, "n_group", None) or 1,
        topk_group=_required(hf_config, "topk_group") if grouped else getattr(hf_config, "topk_group", None) or 1,
        topk_method=topk_method,
        scoring_func=scoring_func,
        norm_topk_prob=model_type == "deepseek_v3" and bool(getattr(hf_config, "norm_topk_prob", False)),
        routed_scaling_factor=float(_required(hf_config, "routed_scaling_factor")),
        aux_loss_alpha=float(getattr(hf_config, "aux_loss_alpha", 0.0) or 0.0),
        seq_aux=bool(getattr(hf_config, "seq_aux", False)),
        initializer_range=getattr(hf_config, "initializer_range", 0.02),
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        name=getattr(hf_config, "_name_or_path", None) or model_type,
    )


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a transformers DeepSeek-V2/V3 state dict to minimoe's names; unpack the 3-D expert stacks.

    Shapes: ``mlp.experts.gate_up_proj`` (E, 2·I, D) → per expert ``w1`` (I, D) and ``w3`` (I, D);
    ``mlp.experts.down_proj`` (E, D, I) → per expert ``w2`` (D, I). Zero-width shared experts (n_shared = 0) are
    dropped. A key it does not know raises ``ValueError``.
    """
    out: dict[str, torch.Tensor] = {}
    inter = cfg.moe_intermediate_size
    for key, tensor in hf_state.items():
        if key in _TOP_LEVEL:
            out[_TOP_LEVEL[key]] = tensor
            continue
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
        if match is None:
            raise ValueError(f"state dict key {key!r} is not part of a DeepSeek-V2/V3 causal LM")
        layer, rest = f"layers.{match.group(1)}", match.group(2)
        if rest in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[f"{layer}.{'attn_norm' if rest.startswith('input') else 'ffn_norm'}.weight"] = tensor
        elif (m := re.fullmatch(r"self_attn\.(\w+)\.(weight|bias)", rest)) and m.group(1) in _ATTN_NAMES:
            out[f"{layer}.attn.{_ATTN_NAMES[m.group(1)]}.{m.group(2)}"] = tensor
        elif m := re.fullmatch(r"mlp\.(gate_proj|up_proj|down_proj)\.weight", rest):  # a dense layer
            out[f"{layer}.ffn.{_MLP_NAMES[m.group(1)]}.weight"] = tensor
        elif rest == "mlp.gate.weight":
            out[f"{layer}.ffn.gate.weight"] = tensor
        elif rest == "mlp.gate.e_score_correction_bias":
            out[f"{layer}.ffn.gate.bias"] = tensor
        elif m := re.fullmatch(r"mlp\.shared_experts\.(gate_proj|up_proj|down_proj)\.weight", rest):
            if cfg.n_shared_experts > 0:
                out[f"{layer}.ffn.shared_experts.{_MLP_NAMES[m.group(1)]}.weight"] = tensor
        elif rest == "mlp.experts.gate_up_proj":  # (E, 2·I, D), gate rows first
            for e in range(tensor.shape[0]):
                out[f"{layer}.ffn.experts.{e}.w1.weight"] = tensor[e, :inter]  # (I, D)
                out[f"{layer}.ffn.experts.{e}.w3.weight"] = tensor[e, inter:]  # (I, D)
        elif rest == "mlp.experts.down_proj":  # (E, D, I)
            for e in range(tensor.shape[0]):
                out[f"{layer}.ffn.experts.{e}.w2.weight"] = tensor[e]  # (D, I)
        elif m := re.fullmatch(r"mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight", rest):  # transformers 4.x: one module each
            out[f"{layer}.ffn.experts.{m.group(1)}.{_MLP_NAMES[m.group(2)]}.weight"] = tensor
        else:
            raise ValueError(f"state dict key {key!r} is not part of a DeepSeek-V2/V3 causal LM")
    return out


def from_hf(hf_model: Any, attn_mode: str = "naive") -> "torch.nn.Module":
    """A ``minimoe.Transformer`` with the config and weights of a transformers DeepseekV2/V3ForCausalLM.

    The weights are copied (float32 parameters, the router bias stays float32); the HF model is left untouched.
    """
    from minimoe.model import Transformer

    if not hasattr(hf_model, "lm_head"):
        raise ValueError(f"hf_model ({type(hf_model).__name__}) must be a DeepseekV2ForCausalLM or "
                         "DeepseekV3ForCausalLM (it needs lm_head)")
    cfg = config_from_hf(hf_model.config)
    model = Transformer(cfg, attn_mode=attn_mode)
    state = state_dict_from_hf(hf_model.state_dict(), cfg)
    model.load_state_dict(state, strict=True)
    return model.train(hf_model.training)


def hf_config_kwargs(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """(model_type, keyword arguments) of the transformers config that behaves like ``cfg``.

    V2 semantics (softmax, greedy or group-limited, no renormalisation, interleaved RoPE) map to
    ``DeepseekV2Config``; V3 semantics (sigmoid, noaux_tc) to ``DeepseekV3Config``; anything else raises.
    """
    if cfg.attention_type != "mla":
        raise ValueError(f"attention_type ({cfg.attention_type!r}) must be 'mla' to export to transformers")
    if cfg.moe_layer_freq != 1:
        raise ValueError(f"moe_layer_freq ({cfg.moe_layer_freq}) must be 1: transformers puts an MoE in every "
                         "layer from first_k_dense_replace on")
    model_type = next((t for t, (methods, scoring) in _ROUTING.items()
                       if cfg.topk_method in methods and cfg.scoring_func == scoring), None)
    if model_type is None:
        raise ValueError(f"topk_method ({cfg.topk_method!r}) with scoring_func ({cfg.scoring_func!r}) has no "
                         "transformers class: V2 is softmax + greedy/group_limited_greedy, V3 sigmoid + noaux_tc")
    if model_type == "deepseek_v2" and (cfg.norm_topk_prob or not cfg.rope_interleave):
        raise ValueError(f"norm_topk_prob ({cfg.norm_topk_prob}) / rope_interleave ({cfg.rope_interleave}): "
                         "transformers' DeepSeek-V2 never renormalises and always uses interleaved RoPE")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None and cfg.rope_scaling.get("type", cfg.rope_scaling.get("rope_type")) == "yarn":
        rope.update({k: cfg.rope_scaling[k] for k in _YARN_KEYS if k in cfg.rope_scaling}, rope_type="yarn")
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads, max_position_embeddings=cfg.max_position_embeddings,
        q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim, rope_parameters=rope,
        attention_bias=cfg.attention_bias, hidden_act="silu", rms_norm_eps=cfg.rms_norm_eps,
        n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
        first_k_dense_replace=cfg.first_k_dense_replace if cfg.is_moe else cfg.num_hidden_layers,
        n_group=cfg.n_group, topk_group=cfg.topk_group, topk_method=cfg.topk_method, scoring_func=cfg.scoring_func,
        norm_topk_prob=cfg.norm_topk_prob, routed_scaling_factor=cfg.routed_scaling_factor,
        aux_loss_alpha=cfg.aux_loss_alpha, seq_aux=cfg.seq_aux, initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if model_type == "deepseek_v3":
        kwargs["rope_interleave"] = cfg.rope_interleave
    return model_type, kwargs


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``state_dict_from_hf``: minimoe names → transformers names, experts packed into 3-D stacks."""
    top_level = {ours: theirs for theirs, ours in _TOP_LEVEL.items()}
    attn_names = {ours: theirs for theirs, ours in _ATTN_NAMES.items()}
    mlp_names = {ours: theirs for theirs, ours in _MLP_NAMES.items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_hidden_layers):
        layer, hf = f"layers.{i}", f"model.layers.{i}"
        if cfg.is_moe_layer(i):
            experts = range(cfg.n_routed_experts)
            w1, w2, w3 = ([state[f"{layer}.ffn.experts.{e}.{w}.weight"] for e in experts] for w in ("w1", "w2", "w3"))
            out[f"{hf}.mlp.experts.gate_up_proj"] = torch.cat([torch.stack(w1), torch.stack(w3)], dim=1)  # (E, 2I, D)
            out[f"{hf}.mlp.experts.down_proj"] = torch.stack(w2)  # (E, D, I)
    for key, tensor in state.items():
        if key in top_level:
            out[top_level[key]] = tensor
            continue
        layer, rest = re.fullmatch(r"layers\.(\d+)\.(.+)", key).groups()
        hf = f"model.layers.{layer}"
        if rest in ("attn_norm.weight", "ffn_norm.weight"):
            out[f"{hf}.{'input_layernorm' if rest.startswith('attn') else 'post_attention_layernorm'}.weight"] = tensor
        elif m := re.fullmatch(r"attn\.(\w+)\.(weight|bias)", rest):
            out[f"{hf}.self_attn.{attn_names[m.group(1)]}.{m.group(2)}"] = tensor
        elif m := re.fullmatch(r"ffn\.(w[123])\.weight", rest):
            out[f"{hf}.mlp.{mlp_names[m.group(1)]}.weight"] = tensor
        elif rest == "ffn.gate.weight":
            out[f"{hf}.mlp.gate.weight"] = tensor
        elif rest == "ffn.gate.bias":
            out[f"{hf}.mlp.gate.e_score_correction_bias"] = tensor
        elif m := re.fullmatch(r"ffn\.shared_experts\.(w[123])\.weight", rest):
            out[f"{hf}.mlp.shared_experts.{mlp_names[m.group(1)]}.weight"] = tensor
        elif not re.fullmatch(r"ffn\.experts\.\d+\.w[123]\.weight", rest):
            raise ValueError(f"state dict key {key!r} has no transformers counterpart")
    return out


def to_hf(model: "torch.nn.Module") -> Any:
    """A transformers DeepseekV2/V3ForCausalLM with the config and weights of a ``minimoe.Transformer``.

    Token ids (bos/eos/pad) are left unset, so ``generate`` stops only at ``max_new_tokens`` unless told otherwise.
    """
    import transformers

    model_type, kwargs = hf_config_kwargs(model.cfg)
    prefix = "DeepseekV2" if model_type == "deepseek_v2" else "DeepseekV3"
    hf_config = getattr(transformers, f"{prefix}Config")(**kwargs)
    hf_model = getattr(transformers, f"{prefix}ForCausalLM")(hf_config)
    state = state_dict_to_hf(model.state_dict(), model.cfg)
    for key, tensor in hf_model.state_dict().items():
        if key not in state and tensor.numel() == 0:  # zero-width shared experts when n_shared_experts = 0
            state[key] = tensor
    hf_model.load_state_dict(state, strict=True)
    return hf_model.train(model.training)
