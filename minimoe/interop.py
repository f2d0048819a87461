"""Hugging Face interop: transformers' DeepseekV2/V3ForCausalLM into a ``minimoe.Transformer``, and back.

minimoe keeps the parameter layouts of DeepSeek-V3's ``inference/model.py``, which are also those of
transformers (``q_a_proj`` = W^DQ, ``kv_a_proj_with_mqa`` = [W^DKV; W^KR], ``kv_b_proj`` = [W^UK; W^UV] per head,
DeepSeek-V2 §2.1.2–2.1.3), so importing renames tensors and unpacks the 3-D expert stacks ``gate_up_proj`` /
``down_proj`` of transformers 5 into one SwiGLU per expert. Nothing is
permuted: the RoPE pair layout is a config flag (``rope_interleave``) that both implementations honour.

Semantics follow the transformers classes, which fix some choices DeepSeek's own configs leave open:
``DeepseekV2ForCausalLM`` always rotates interleaved pairs, scores with a softmax and never renormalises
the top-k weights; ``DeepseekV3ForCausalLM`` always routes with sigmoid scores and ``noaux_tc``; both put
an MoE in every layer from ``first_k_dense_replace`` on (``moe_layer_freq`` is not read). A config outside
what both sides represent raises ``ValueError`` naming the field and its value. transformers is imported
only inside the functions, so ``import minimoe`` works without it.
"""

from __future__ import annotations

from typing import Any

import torch

from minimoe.config import ModelConfig

# transformers name -> minimoe name, one dotted component at a time.
# SwiGLU: w2(silu(w1 x) * w3 x), w1 = gate_proj, w3 = up_proj, w2 = down_proj.
_NAMES = {"embed_tokens": "embed", "lm_head": "head", "input_layernorm": "attn_norm",
          "post_attention_layernorm": "ffn_norm", "self_attn": "attn", "mlp": "ffn",
          "q_proj": "wq", "q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
          "kv_a_proj_with_mqa": "wkv_a", "kv_a_layernorm": "kv_norm", "kv_b_proj": "wkv_b", "o_proj": "wo",
          "gate_proj": "w1", "down_proj": "w2", "up_proj": "w3", "gate": "router", "e_score_correction_bias": "bias"}
# "bias" also names attention biases, so state_dict_to_hf maps the router's bias by its full key
_HF_NAMES = {ours: theirs for theirs, ours in _NAMES.items() if ours != "bias"}
# model_type -> (the topk_methods its router implements, its scoring function)
_ROUTING = {"deepseek_v2": (("greedy", "group_limited_greedy"), "softmax"),
            "deepseek_v3": (("noaux_tc",), "sigmoid")}
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
              "mscale_all_dim", "attention_factor", "truncate")


def _unsupported(field: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"unsupported Hugging Face config: {field} ({value!r}) {rule}")


def _required(hf_config: Any, name: str) -> Any:
    value = getattr(hf_config, name, None)
    if value is None:
        raise _unsupported(name, value, "is missing; minimoe needs it to build the model")
    return value


def _rope_from_hf(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from ``rope_parameters`` (transformers 5) or ``rope_scaling`` (4.x).

    YaRN keys pass through unchanged: ``minimoe.attention.rope`` reads them as transformers'
    ``_compute_yarn_parameters`` and ``yarn_apply_mscale`` do.
    """
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    params = dict(params or {})
    theta = params.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
    kind = params.pop("rope_type", None) or params.get("type") or "default"
    params.pop("type", None)
    if kind == "default":
        return float(theta), None
    if kind != "yarn":
        raise _unsupported("rope_parameters rope_type", kind, "must be 'default' or 'yarn'")
    partial = params.pop("partial_rotary_factor", 1.0)
    if partial != 1.0:
        raise _unsupported("rope_parameters partial_rotary_factor", partial,
                           "must be 1.0 (MLA rotates all d_r dims)")
    unknown = sorted(set(params) - set(_YARN_KEYS))
    if unknown:
        raise _unsupported(f"rope_parameters {unknown[0]}", params[unknown[0]],
                           "is not a YaRN setting minimoe reads")
    scaling = {"type": "yarn", **{k: v for k, v in params.items() if v is not None}}
    if "original_max_position_embeddings" not in scaling:
        raise _unsupported("rope_parameters original_max_position_embeddings", None, "is needed by YaRN")
    # transformers' rule when factor is unset: the extended context over the original one
    original = scaling["original_max_position_embeddings"]
    scaling.setdefault("factor", hf_config.max_position_embeddings / original)
    return float(theta), scaling


def config_from_hf(hf_config: Any) -> ModelConfig:
    """The ``ModelConfig`` that behaves like a transformers ``DeepseekV2Config`` or ``DeepseekV3Config``.

    Raises ``ValueError`` naming the field for what the converter cannot represent: another
    ``model_type``, a ``topk_method`` or ``scoring_func`` the class does not implement, ``moe_layer_freq``
    other than 1, a RoPE type other than default/YaRN, MLP biases, an activation other than SiLU, a missing
    size. The V3 selection bias ``e_score_correction_bias`` is a weight, not a config field: ``from_hf``
    copies it.
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
    for name, expected in (("hidden_act", "silu"), ("moe_layer_freq", 1), ("mlp_bias", False)):
        value = getattr(hf_config, name, None)
        if value is not None and value != expected:
            raise _unsupported(name, value, f"must be {expected!r}")
    if model_type == "deepseek_v2" and getattr(hf_config, "norm_topk_prob", False):
        raise _unsupported("norm_topk_prob", True,
                           "is ignored by transformers' DeepseekV2TopkRouter; set it to False")
    # num_key_value_heads is not read: MLA expands its latent to num_attention_heads keys (so does HF)
    sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
             "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "rms_norm_eps",
             "routed_scaling_factor"]
    values = {name: _required(hf_config, name) for name in sizes}
    first_dense = getattr(hf_config, "first_k_dense_replace", None) or 0
    if first_dense >= values["num_hidden_layers"]:  # no MoE layer at all: minimoe's dense form
        values["n_routed_experts"], first_dense = 0, 0
    elif values["n_routed_experts"] <= 0:
        raise _unsupported("n_routed_experts", values["n_routed_experts"],
                           "must be positive when first_k_dense_replace < num_hidden_layers")
    grouped = topk_method != "greedy"
    groups = {name: _required(hf_config, name) if grouped else getattr(hf_config, name, None) or 1
              for name in ("n_group", "topk_group")}
    rope_theta, rope_scaling = _rope_from_hf(hf_config)
    return ModelConfig(
        **values, **groups, first_k_dense_replace=first_dense,
        q_lora_rank=getattr(hf_config, "q_lora_rank", None),
        rope_theta=rope_theta, rope_scaling=rope_scaling,
        rope_interleave=model_type == "deepseek_v2" or bool(getattr(hf_config, "rope_interleave", True)),
        attention_bias=bool(getattr(hf_config, "attention_bias", False)),
        n_shared_experts=getattr(hf_config, "n_shared_experts", None) or 0,
        topk_method=topk_method, scoring_func=scoring_func,
        norm_topk_prob=model_type == "deepseek_v3" and bool(getattr(hf_config, "norm_topk_prob", False)),
        aux_loss_alpha=float(getattr(hf_config, "aux_loss_alpha", None) or 0.0),
        seq_aux=bool(getattr(hf_config, "seq_aux", False)),
        initializer_range=getattr(hf_config, "initializer_range", None) or 0.02,
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        name=getattr(hf_config, "_name_or_path", None) or model_type,
    )


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' DeepSeek-V2/V3 state dict under minimoe's names, routed experts one module each.

    Per-expert modules (transformers 4.x) are renamed; 3-D stacks (5.x) are unpacked. Zero-width shared
    experts (transformers builds them when n_shared_experts = 0) are dropped.

    Shapes:
        ``experts.gate_up_proj`` (E, 2·I, d), gate rows first → per expert ``w1`` (I, d), ``w3`` (I, d);
        ``experts.down_proj`` (E, d, I) → per expert ``w2`` (d, I).
    """
    out: dict[str, torch.Tensor] = {}
    inter = cfg.moe_intermediate_size
    for key, tensor in hf_state.items():
        name = ".".join(_NAMES.get(part, part) for part in key.removeprefix("model.").split("."))
        if name.endswith("ffn.experts.gate_up_proj"):
            for e in range(tensor.shape[0]):
                out[name.replace("gate_up_proj", f"{e}.w1.weight")] = tensor[e, :inter]  # (I, d)
                out[name.replace("gate_up_proj", f"{e}.w3.weight")] = tensor[e, inter:]  # (I, d)
        elif name.endswith("ffn.experts.w2"):  # the 3-D down_proj stack (E, d, I)
            for e in range(tensor.shape[0]):
                out[name.replace("w2", f"{e}.w2.weight")] = tensor[e]  # (d, I)
        elif ".shared_experts." not in name or cfg.n_shared_experts > 0:
            out[name] = tensor
    return out


def state_dict_to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``state_dict_from_hf``, packing routed experts into transformers 5's 3-D stacks.

    Shapes:
        per expert ``w1``, ``w3`` (I, d) and ``w2`` (d, I)
        → ``gate_up_proj`` (E, 2·I, d) and ``down_proj`` (E, d, I).
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if ".ffn.experts." in key or key.startswith("mtp."):  # transformers has no MTP module
            continue
        if key.endswith("ffn.router.bias"):
            key = key.removesuffix("bias") + "e_score_correction_bias"
        hf = ".".join(_HF_NAMES.get(part, part) for part in key.split("."))
        out[hf if hf == "lm_head.weight" else f"model.{hf}"] = tensor
    for i in range(cfg.num_hidden_layers):
        if cfg.is_moe_layer(i):
            experts = range(cfg.n_routed_experts)
            w1, w2, w3 = ([state[f"layers.{i}.ffn.experts.{e}.{w}.weight"] for e in experts]
                          for w in ("w1", "w2", "w3"))
            stacks = f"model.layers.{i}.mlp.experts"
            out[f"{stacks}.gate_up_proj"] = torch.cat([torch.stack(w1), torch.stack(w3)], dim=1)  # (E, 2I, d)
            out[f"{stacks}.down_proj"] = torch.stack(w2)  # (E, d, I)
    return out


def from_hf(hf_model: Any, attn_mode: str = "naive") -> torch.nn.Module:
    """A ``minimoe.Transformer`` with the config and a copy of the weights of a DeepseekV2/V3ForCausalLM.

    The copy is float32 whatever the checkpoint's dtype (the router bias is float32 on both sides); the
    returned model is in the same train/eval mode as ``hf_model``.
    """
    from minimoe.model import Transformer

    if not hasattr(hf_model, "lm_head"):
        raise ValueError(f"hf_model ({type(hf_model).__name__}) must be a DeepseekV2ForCausalLM or "
                         "DeepseekV3ForCausalLM: the output head lm_head is missing")
    cfg = config_from_hf(hf_model.config)
    model = Transformer(cfg, attn_mode=attn_mode)
    model.load_state_dict(state_dict_from_hf(hf_model.state_dict(), cfg), strict=True)
    return model.train(hf_model.training)


def hf_config_kwargs(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """(model_type, keyword arguments) of the transformers config that behaves like ``cfg``.

    Softmax with greedy or group-limited routing maps to ``DeepseekV2Config`` (interleaved RoPE, no
    renormalising), sigmoid with ``noaux_tc`` to ``DeepseekV3Config``; anything else raises ``ValueError``.
    Token ids are unset, so ``generate`` stops only at ``max_new_tokens`` unless given an ``eos_token_id``.
    """
    if cfg.attention_type != "mla":
        raise ValueError(f"attention_type ({cfg.attention_type!r}) must be 'mla' to export to transformers")
    if cfg.moe_layer_freq != 1:
        raise ValueError(f"moe_layer_freq ({cfg.moe_layer_freq}) must be 1: transformers puts an MoE in "
                         "every layer from first_k_dense_replace on")
    model_type = next((kind for kind, (methods, scoring) in _ROUTING.items()
                       if cfg.topk_method in methods and cfg.scoring_func == scoring), None)
    if model_type is None:
        raise ValueError(f"topk_method ({cfg.topk_method!r}) with scoring_func ({cfg.scoring_func!r}) has "
                         "no transformers class: V2 is softmax + greedy/group_limited_greedy, "
                         "V3 sigmoid + noaux_tc")
    if model_type == "deepseek_v2" and (cfg.norm_topk_prob or not cfg.rope_interleave):
        raise ValueError(f"norm_topk_prob ({cfg.norm_topk_prob}) and rope_interleave "
                         f"({cfg.rope_interleave}) must be False and True: transformers' DeepSeek-V2 never "
                         "renormalises and always rotates interleaved pairs")
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    scaling = cfg.rope_scaling or {}
    if scaling.get("type", scaling.get("rope_type")) == "yarn":
        rope.update({k: scaling[k] for k in _YARN_KEYS if k in scaling}, rope_type="yarn")
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
        n_group=cfg.n_group, topk_group=cfg.topk_group, topk_method=cfg.topk_method,
        scoring_func=cfg.scoring_func, norm_topk_prob=cfg.norm_topk_prob,
        routed_scaling_factor=cfg.routed_scaling_factor, aux_loss_alpha=cfg.aux_loss_alpha,
        seq_aux=cfg.seq_aux,
        initializer_range=cfg.initializer_range, tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    if model_type == "deepseek_v3":
        kwargs["rope_interleave"] = cfg.rope_interleave
    return model_type, kwargs


def to_hf(model: torch.nn.Module) -> Any:
    """A transformers DeepseekV2/V3ForCausalLM with the config and a copy of the weights of ``model``.

    ``model`` is a ``minimoe.Transformer``; what its config cannot express in transformers raises
    ``ValueError`` (see ``hf_config_kwargs``). The result is in ``model``'s train/eval mode. transformers'
    DeepseekV3ForCausalLM has no multi-token prediction module (it skips the MTP weights of DeepSeek's checkpoint):
    a model with ``num_nextn_predict_layers`` > 0 exports its main model, with a warning that the MTP weights stay
    behind; ``from_hf`` therefore always returns a model with D = 0.
    """
    import warnings

    import transformers

    if getattr(model.cfg, "num_nextn_predict_layers", 0):
        warnings.warn(f"transformers has no MTP module: the {model.cfg.num_nextn_predict_layers} MTP module(s) are "
                      "not exported, only the main model", stacklevel=2)

    model_type, kwargs = hf_config_kwargs(model.cfg)
    prefix = {"deepseek_v2": "DeepseekV2", "deepseek_v3": "DeepseekV3"}[model_type]
    hf_config = getattr(transformers, f"{prefix}Config")(**kwargs)
    hf_model = getattr(transformers, f"{prefix}ForCausalLM")(hf_config)
    state = state_dict_to_hf(model.state_dict(), model.cfg)
    for key, tensor in hf_model.state_dict().items():
        if key not in state and tensor.numel() == 0:  # zero-width shared experts when n_shared_experts = 0
            state[key] = tensor
    hf_model.load_state_dict(state, strict=True)
    return hf_model.train(model.training)
