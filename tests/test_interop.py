"""minimoe.interop against transformers' DeepseekV2/V3ForCausalLM: small random configs, fp32, eval mode."""

import functools
import subprocess
import sys
import types

import pytest
import torch

import minimoe
from minimoe.config import ModelConfig
from minimoe.interop import config_from_hf, from_hf, state_dict_from_hf, to_hf

pytestmark = pytest.mark.equivalence
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_attention_heads=4, kv_lora_rank=32,
             qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, n_routed_experts=8,
             num_experts_per_tok=2, moe_intermediate_size=24, max_position_embeddings=128,
             pad_token_id=None, bos_token_id=None, eos_token_id=None)
# V2/V2-Lite hub style (mscale == mscale_all_dim) and one with mscale != mscale_all_dim, so that the
# cos/sin factor mscale(s, mscale) / mscale(s, mscale_all_dim) is not 1 either.
YARN_V2 = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
           "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
YARN_SKEWED = {**YARN_V2, "rope_theta": 5000.0, "mscale": 1.0, "mscale_all_dim": 0.5}

CASES = {
    "v2-softmax-greedy": ("V2", dict(num_hidden_layers=2, q_lora_rank=48, topk_method="greedy",
                                     first_k_dense_replace=1, n_shared_experts=2, routed_scaling_factor=1.0,
                                     tie_word_embeddings=True)),
    "v2-group-limited-qnone-yarn": ("V2", dict(num_hidden_layers=3, q_lora_rank=None,
                                               topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                               first_k_dense_replace=0, n_shared_experts=1,
                                               routed_scaling_factor=16.0, rope_parameters=YARN_V2)),
    "v3-noaux-interleave-yarn": ("V3", dict(num_hidden_layers=3, q_lora_rank=48, n_group=4, topk_group=2,
                                            first_k_dense_replace=1, n_shared_experts=1, rope_interleave=True,
                                            routed_scaling_factor=2.5, rope_parameters=YARN_SKEWED,
                                            attention_bias=True)),
    "v3-noaux-rotate-half": ("V3", dict(num_hidden_layers=2, q_lora_rank=None, n_group=2, topk_group=1,
                                        first_k_dense_replace=0, n_shared_experts=0, rope_interleave=False,
                                        norm_topk_prob=False, routed_scaling_factor=1.5)),
}


@functools.cache
def hf_model(case: str):
    """A DeepseekV2/V3ForCausalLM with every weight random (norm gains and the selection bias included)."""
    version, overrides = CASES[case]
    config = getattr(transformers, f"Deepseek{version}Config")(**SMALL, **overrides)
    torch.manual_seed(sum(map(ord, case)))
    model = getattr(transformers, f"Deepseek{version}ForCausalLM")(config).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("norm.weight"):
                tensor.copy_(1 + 0.2 * torch.randn_like(tensor))
            elif name.endswith("e_score_correction_bias"):
                tensor.copy_(0.05 * torch.randn_like(tensor))
            elif name.endswith("mlp.gate.weight"):
                tensor.normal_(std=0.5)  # decisive routing: no near-ties between experts
            else:
                tensor.normal_(std=1.0 if "embed_tokens" in name else 0.1)
    return model


def tokens(case: str, batch: int = 2, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(len(case))
    return torch.randint(0, SMALL["vocab_size"], (batch, length), generator=generator)


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, mode):
    hf = hf_model(case)
    ours = from_hf(hf, attn_mode=mode)
    x = tokens(case)
    with torch.no_grad():
        expected = hf(x).logits
        got = ours(x).logits
    assert relative_error(got, expected) < 1e-4


def test_latent_norms_keep_eps_1e6_whatever_rms_norm_eps():
    version, overrides = CASES["v3-noaux-interleave-yarn"]
    config = transformers.DeepseekV3Config(**SMALL, **{**overrides, "rms_norm_eps": 0.1})
    torch.manual_seed(1)
    hf = transformers.DeepseekV3ForCausalLM(config).eval()
    x = tokens("eps")
    with torch.no_grad():
        assert relative_error(from_hf(hf)(x).logits, hf(x).logits) < 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trips_and_selection_bias_is_copied(case):
    hf = hf_model(case)
    cfg = config_from_hf(hf.config)
    version, overrides = CASES[case]
    assert cfg.topk_method == overrides.get("topk_method", "noaux_tc")
    assert cfg.rope_interleave == overrides.get("rope_interleave", True)
    assert cfg.q_lora_rank == overrides["q_lora_rank"]
    assert (cfg.rope_scaling is None) == ("rope_parameters" not in overrides)
    ours = from_hf(hf)
    for i, layer in enumerate(ours.layers):
        assert cfg.is_moe_layer(i) == (i >= overrides["first_k_dense_replace"])
        if version == "V3" and cfg.is_moe_layer(i):
            theirs = hf.model.layers[i].mlp.gate.e_score_correction_bias
            torch.testing.assert_close(layer.ffn.router.bias, theirs, rtol=0, atol=0)
            assert layer.ffn.router.bias.abs().max() > 0


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_decoding_matches_transformers(case, mode):
    hf = hf_model(case)
    ours = from_hf(hf, attn_mode=mode)
    prompts = [tokens(case, 1, 7)[0].tolist(), tokens(case + "!", 1, 4)[0].tolist()]
    expected = []
    for prompt in prompts:  # one at a time: no padding on the transformers side
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, use_cache=True,
                          pad_token_id=0)
        expected.append(out[0, len(prompt):].tolist())
    assert minimoe.generate(ours, prompts, max_new_tokens=10) == expected


def test_hf_to_minimoe_to_hf_is_exact():
    hf = hf_model("v3-noaux-interleave-yarn")
    back = to_hf(from_hf(hf)).eval()
    assert config_from_hf(back.config) == config_from_hf(hf.config)
    x = tokens("round-trip")
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("preset, hf_class", [("tiny-dense", "DeepseekV2ForCausalLM"),
                                              ("tiny-v2", "DeepseekV2ForCausalLM"),
                                              ("tiny-v3", "DeepseekV3ForCausalLM")])
def test_minimoe_to_hf_keeps_config_and_logits(preset, hf_class):
    # bias_update_speed is a training setting transformers has no field for
    cfg = ModelConfig.from_preset(preset, bias_update_speed=0.0)
    torch.manual_seed(0)
    ours = minimoe.Transformer(cfg).eval()
    for layer in ours.layers:
        if getattr(layer.ffn, "router", None) is not None and layer.ffn.router.bias is not None:
            layer.ffn.router.bias.normal_(std=0.05)
    hf = to_hf(ours).eval()
    assert type(hf).__name__ == hf_class
    assert config_from_hf(hf.config) == cfg
    x = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        assert relative_error(ours(x).logits, hf(x).logits) < 1e-4


def test_per_expert_modules_of_older_transformers_are_read():
    hf = hf_model("v3-noaux-rotate-half")
    cfg = config_from_hf(hf.config)
    packed = hf.state_dict()
    unpacked = {}
    inter = cfg.moe_intermediate_size
    for key, tensor in packed.items():
        if key.endswith("experts.gate_up_proj"):
            for e in range(tensor.shape[0]):
                unpacked[key.replace("gate_up_proj", f"{e}.gate_proj.weight")] = tensor[e, :inter]
                unpacked[key.replace("gate_up_proj", f"{e}.up_proj.weight")] = tensor[e, inter:]
        elif key.endswith("experts.down_proj"):
            for e in range(tensor.shape[0]):
                unpacked[key.replace("down_proj", f"{e}.down_proj.weight")] = tensor[e]
        else:
            unpacked[key] = tensor
    a, b = state_dict_from_hf(packed, cfg), state_dict_from_hf(unpacked, cfg)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


V2, V3 = transformers.DeepseekV2Config, transformers.DeepseekV3Config


def test_legacy_rope_scaling_reads_like_rope_parameters():
    legacy = {"type": "yarn", **{k: v for k, v in YARN_V2.items() if k not in ("rope_type", "rope_theta")}}
    current = config_from_hf(V2(**SMALL, num_hidden_layers=2, rope_parameters=YARN_V2))
    assert config_from_hf(V2(**SMALL, num_hidden_layers=2, rope_scaling=legacy)) == current
    # a transformers 4.x config: rope_theta beside rope_scaling, no rope_parameters
    fields = V2(**SMALL, num_hidden_layers=2).to_dict()
    del fields["rope_parameters"]
    old = types.SimpleNamespace(**fields, rope_scaling=legacy, rope_theta=YARN_V2["rope_theta"])
    assert config_from_hf(old) == current


@pytest.mark.parametrize("make, field", [
    (lambda: V2(**SMALL, num_hidden_layers=2, topk_method="noaux_tc"), "topk_method ('noaux_tc')"),
    (lambda: V3(**SMALL, num_hidden_layers=2, topk_method="group_limited_greedy"), "topk_method"),
    (lambda: V3(**SMALL, num_hidden_layers=2, scoring_func="softmax"), "scoring_func ('softmax')"),
    (lambda: V2(**SMALL, num_hidden_layers=2, scoring_func="sigmoid"), "scoring_func ('sigmoid')"),
    (lambda: V2(**SMALL, num_hidden_layers=2, moe_layer_freq=2), "moe_layer_freq (2)"),
    (lambda: V3(**SMALL, num_hidden_layers=2, hidden_act="gelu"), "hidden_act ('gelu')"),
    (lambda: V2(**SMALL, num_hidden_layers=2, mlp_bias=True), "mlp_bias (True)"),
    (lambda: V2(**SMALL, num_hidden_layers=2, norm_topk_prob=True), "norm_topk_prob"),
    (lambda: V2(**SMALL, num_hidden_layers=2, topk_method="group_limited_greedy"), "n_group (None)"),
    (lambda: V2(**{**SMALL, "num_experts_per_tok": None}, num_hidden_layers=2), "num_experts_per_tok (None)"),
    (lambda: V3(**SMALL, num_hidden_layers=2, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                               "rope_theta": 1e4}), "rope_type ('linear')"),
    (lambda: V3(**SMALL, num_hidden_layers=2, rope_parameters={**YARN_V2, "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (lambda: transformers.LlamaConfig(hidden_size=64, num_attention_heads=4), "model_type ('llama')"),
])
def test_unsupported_hf_configs_name_the_field(make, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        config_from_hf(make())


@pytest.mark.parametrize("changes, field", [
    (dict(attention_type="mha"), "attention_type"),
    (dict(moe_layer_freq=2), "moe_layer_freq"),
    (dict(topk_method="greedy", scoring_func="sigmoid"), "scoring_func"),
    (dict(topk_method="greedy", scoring_func="softmax", norm_topk_prob=True), "norm_topk_prob"),
])
def test_to_hf_refuses_what_transformers_cannot_express(changes, field):
    cfg = ModelConfig.from_preset("tiny-v3", **changes)
    with pytest.raises(ValueError, match=field):
        to_hf(minimoe.Transformer(cfg))


@pytest.mark.slow
def test_package_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None; import minimoe, minimoe.interop; "
            "assert minimoe.interop.from_hf")
    subprocess.run([sys.executable, "-c", code], check=True)
