"""Attention: RoPE layouts and YaRN against Hugging Face, softmax scale, and the invariants of MHA/GQA/MQA and MLA
(causality, cache == no cache, naive == absorbed, left padding, gradients, cache size, errors). Inputs are checked
once by ``Transformer.forward`` (tests/test_model.py), not by the layers."""

import pytest
import torch

from minimoe.attention import (
    LayerCache,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    RotaryEmbedding,
    apply_rope,
    attention_inputs,
    rope_inv_freq,
    softmax_scale,
    yarn_get_mscale,
)
from minimoe.config import ModelConfig


YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
        "mscale": 0.707, "mscale_all_dim": 0.707}
BASE = {"vocab_size": 32, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
        "max_position_embeddings": 256}


def mla_cfg(q_lora_rank=None, interleave=True, rope_scaling=YARN, **kw):
    return ModelConfig(**{**BASE, **kw}, q_lora_rank=q_lora_rank, rope_interleave=interleave,
                       rope_scaling=rope_scaling)


@pytest.fixture
def hf():
    """transformers' DeepSeek-V3 modelling: only the equality tests need it (the invariants run without it)."""
    return pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")


ROPES = {}  # module -> its config's RotaryEmbedding


def run(module, x, position_ids=None, cache=None, padding_mask=None):
    """Call an attention module as ``Transformer.forward`` does: RoPE table and mask prepared by the caller."""
    past = 0 if cache is None else len(cache)
    cos_sin, mask = attention_inputs(ROPES[module], x.shape[0], x.shape[1], past, position_ids,
                                     padding_mask)
    return module(x, cos_sin, mask, cache)


def build(kind, dtype=torch.float32, **kw):
    """A seeded attention module: 'mla-naive', 'mla-absorbed', 'mha', 'gqa', 'mqa'."""
    torch.manual_seed(0)
    if kind.startswith("mla"):
        cfg = mla_cfg(**kw)
        module = MultiHeadLatentAttention(cfg, mode=kind.split("-")[1])
    else:
        n_kv = {"mha": None, "gqa": 2, "mqa": 1}[kind]
        cfg = mla_cfg(**kw).replace(attention_type="mha", num_key_value_heads=n_kv)
        module = MultiHeadAttention(cfg)
    ROPES[module] = RotaryEmbedding.of(cfg)  # the table the model would hand it
    return module.to(dtype)


KINDS = ["mha", "gqa", "mqa", "mla-naive", "mla-absorbed"]
PERM = torch.cat((torch.arange(0, 8, 2), torch.arange(1, 8, 2)))  # interleaved -> rotate-half order for d_r = 8


# ----------------------------------------------------------------------------------------------- RoPE and YaRN
def test_layouts_are_one_rotation_up_to_a_fixed_permutation():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8)  # (B, T, H, d_r)
    cos, sin = RotaryEmbedding(8, 256, rope_scaling=YARN).cos_sin(torch.randint(0, 256, (2, 5)))
    interleaved, half = apply_rope(x, cos, sin, interleave=True), apply_rope(x[..., PERM], cos, sin, interleave=False)
    torch.testing.assert_close(interleaved[..., PERM], half)
    # DeepSeek-V3 inference/model.py apply_rotary_emb: complex product of pairs (x0, x1), (x2, x3), …
    freqs_cis = torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))[:, :, None]  # (B, T, 1, d_r/2)
    reference = torch.view_as_real(torch.view_as_complex(x.reshape(2, 5, 3, 4, 2)) * freqs_cis).flatten(-2)
    torch.testing.assert_close(interleaved, reference)


def test_rope_matches_hf_in_both_layouts_and_is_relative(hf):
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 1, 6, 8)  # HF layout (B, H, T, d_r)
    position_ids = torch.arange(10, 16).expand(2, 6)
    cos, sin = RotaryEmbedding(8, 256).cos_sin(position_ids)  # (B, T, d_r/2)
    cos_hf, sin_hf = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # HF's cat(freqs, freqs)

    def ours(x, interleave):
        return apply_rope(x.transpose(1, 2), cos, sin, interleave).transpose(1, 2)

    q_hf, k_hf = hf.apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    torch.testing.assert_close((ours(q, False), ours(k, False)), (q_hf, k_hf))
    q_hf, k_hf = hf.apply_rotary_pos_emb_interleave(q, k, cos_hf, sin_hf)  # writes pairs de-interleaved
    torch.testing.assert_close((ours(q, True)[..., PERM], ours(k, True)[..., PERM]), (q_hf, k_hf))
    rope = RotaryEmbedding(8, 256)

    def score(m, n):  # one head's q at position m against k at position n
        return (rope(q[:, :, :1], torch.tensor([[m]])) * rope(k[:, :, :1], torch.tensor([[n]]))).sum(-1)

    torch.testing.assert_close(score(7, 3), score(107, 103))  # depends on m − n only


@pytest.mark.parametrize("scaling", [
    dict(YARN),
    {**YARN, "mscale": 1.0, "mscale_all_dim": 0.5},  # cos/sin factor mscale(s, 1) / mscale(s, 0.5) != 1
    {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 32},  # no mscale: factor mscale(40)
])
def test_yarn_inv_freq_cos_sin_and_scale_equal_hf(scaling, hf):
    cfg = mla_cfg(rope_scaling=scaling, qk_rope_head_dim=16, max_position_embeddings=1024)
    hf_params = {k: v for k, v in scaling.items() if k != "type"} | {"rope_type": "yarn", "rope_theta": 10000.0}
    hf_cfg = hf.DeepseekV3Config(vocab_size=32, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                              qk_rope_head_dim=16, qk_nope_head_dim=8, v_head_dim=8, kv_lora_rank=16, q_lora_rank=None,
                              max_position_embeddings=1024, num_hidden_layers=1, rope_parameters=hf_params)
    hf_rope = hf.DeepseekV3RotaryEmbedding(hf_cfg)
    inv_freq, attention_factor = rope_inv_freq(16, 10000.0, scaling)
    assert torch.equal(inv_freq, hf_rope.inv_freq) and attention_factor == pytest.approx(hf_rope.attention_scaling)
    position_ids = torch.tensor([[0, 1, 5, 63, 64, 500, 1023]])
    cos, sin = RotaryEmbedding(16, 1024, rope_scaling=scaling).cos_sin(position_ids)
    cos_hf, sin_hf = hf_rope(torch.zeros(1), position_ids)
    torch.testing.assert_close((cos, sin), (cos_hf[..., :8], sin_hf[..., :8]))
    assert softmax_scale(cfg) == pytest.approx(hf.DeepseekV3Attention(hf_cfg, 0).scaling)


def test_softmax_scale_of_published_configs():
    # DeepSeek-V3 inference/model.py MLA.__init__: 192^-0.5 = 0.07217; V3 (mscale 1.0) 0.13523; V2 / V2-Lite (mscale 0.707) 0.11472
    assert softmax_scale(ModelConfig.from_preset("deepseek-v3")) == pytest.approx(0.13523, abs=5e-6)
    assert softmax_scale(ModelConfig.from_preset("deepseek-v2")) == pytest.approx(0.11472, abs=5e-6)
    assert softmax_scale(ModelConfig.from_preset("deepseek-v2-lite")) == pytest.approx(0.11472, abs=5e-6)
    assert yarn_get_mscale(40.0, 1.0) == pytest.approx(1.3689, abs=5e-5)
    assert softmax_scale(ModelConfig.from_preset("deepseek-v3", rope_scaling=None)) == pytest.approx(0.07217, abs=5e-6)


@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("interleave", [True, False])
def test_mla_equals_hf_deepseek_v3_attention_after_a_weight_copy(q_lora_rank, interleave, hf):
    cfg = mla_cfg(q_lora_rank=q_lora_rank, interleave=interleave)
    hf_cfg = hf.DeepseekV3Config(vocab_size=32, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                              qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, kv_lora_rank=16,
                              q_lora_rank=q_lora_rank, max_position_embeddings=256, num_hidden_layers=1,
                              rope_interleave=interleave, attn_implementation="eager",
                              rope_parameters={k: v for k, v in YARN.items() if k != "type"}
                              | {"rope_type": "yarn", "rope_theta": 10000.0})
    torch.manual_seed(0)
    theirs = hf.DeepseekV3Attention(hf_cfg, 0).eval()
    names = {"q_proj": "wq", "q_a_proj": "wq_a", "q_a_layernorm": "q_norm", "q_b_proj": "wq_b",
             "kv_a_proj_with_mqa": "wkv_a", "kv_a_layernorm": "kv_norm", "kv_b_proj": "wkv_b", "o_proj": "wo"}
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.add_(0.1 * torch.randn_like(p)) if "layernorm" in name else None  # norms away from all-ones
    state = {names[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in theirs.state_dict().items()}
    x, position_ids = torch.randn(2, 7, 32), torch.arange(7).expand(2, 7)
    causal = torch.full((7, 7), float("-inf")).triu(1).expand(2, 1, 7, 7)
    expected, _ = theirs(x, hf.DeepseekV3RotaryEmbedding(hf_cfg)(x, position_ids), causal)
    for mode in ("naive", "absorbed"):
        ours = MultiHeadLatentAttention(cfg, mode=mode)
        ROPES[ours] = RotaryEmbedding.of(cfg)
        ours.load_state_dict(state)
        torch.testing.assert_close(run(ours, x), expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("kind", KINDS)
def test_causal_future_tokens_never_change_past_outputs(kind):
    module = build(kind, q_lora_rank=12)
    x = torch.randn(2, 9, 32)
    x_changed = x.clone()
    x_changed[:, 5:] = torch.randn(2, 4, 32)
    torch.testing.assert_close(run(module, x)[:, :5], run(module, x_changed)[:, :5])


@pytest.mark.parametrize("kind", KINDS)
def test_cache_prefill_then_decode_equals_no_cache(kind):
    module = build(kind, interleave=kind != "gqa")
    x = torch.randn(2, 9, 32)
    cache = LayerCache()
    steps = [run(module, x[:, :4], cache=cache)] + [run(module, x[:, t:t + 1], cache=cache) for t in range(4, 9)]
    assert len(cache) == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), run(module, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("q_lora_rank", [None, 12])
@pytest.mark.parametrize("interleave", [True, False])
def test_naive_equals_absorbed(q_lora_rank, interleave):
    module = build("mla-naive", q_lora_rank=q_lora_rank, interleave=interleave)
    x = torch.randn(3, 11, 32)
    position_ids = torch.arange(100, 111).expand(3, 11)  # past YaRN's original 64 positions
    naive, naive_cache = run(module, x, position_ids), LayerCache()
    run(module, x[:, :6], position_ids[:, :6], cache=naive_cache)
    module.mode = "absorbed"
    absorbed_cache = LayerCache()
    absorbed = torch.cat((run(module, x[:, :6], position_ids[:, :6], cache=absorbed_cache),
                          run(module, x[:, 6:], position_ids[:, 6:], cache=absorbed_cache)), dim=1)
    torch.testing.assert_close(absorbed, naive, atol=1e-5, rtol=1e-5)
    module.mode = "naive"
    torch.testing.assert_close(run(module, x[:, 6:], position_ids[:, 6:], cache=naive_cache), naive[:, 6:],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_gives_the_unpadded_outputs_and_no_nan(kind):
    module = build(kind, q_lora_rank=12)
    long, short = torch.randn(1, 7, 32), torch.randn(1, 4, 32)
    batch = torch.cat((long, torch.cat((torch.randn(1, 3, 32), short), dim=1)))  # row 1: 3 pads, then 4 tokens
    padding_mask = torch.tensor([[True] * 7, [False] * 3 + [True] * 4])
    position_ids = torch.stack((torch.arange(7), torch.tensor([0, 0, 0, 0, 1, 2, 3])))
    cache = LayerCache()
    prefill = run(module, batch[:, :5], position_ids[:, :5], cache=cache, padding_mask=padding_mask[:, :5])
    decoded = run(module, batch[:, 5:], position_ids[:, 5:], cache=cache, padding_mask=padding_mask)
    out = torch.cat((prefill, decoded), dim=1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:, 3:], run(module, short), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:1], run(module, long), atol=1e-5, rtol=1e-5)
    no_cache = run(module, batch, position_ids, padding_mask=padding_mask)
    assert torch.isfinite(no_cache).all()  # padded queries see no real key: finite, otherwise arbitrary
    torch.testing.assert_close(no_cache[padding_mask], out[padding_mask], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mla-naive", "mla-absorbed", "gqa"])
def test_gradcheck_float64(kind):
    module = build(kind, torch.float64, q_lora_rank=6, hidden_size=8, num_attention_heads=2, kv_lora_rank=6,
                   qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4)
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: run(module, x, torch.tensor([[3, 70, 71, 200]])), (x,))


def test_cache_holds_exactly_the_expected_elements_per_token():
    cfg = mla_cfg(q_lora_rank=12)
    H, n, r, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    x = torch.randn(2, 5, 32)
    expected = {"mla-absorbed": cfg.kv_lora_rank + r, "mla-naive": H * (n + r) + H * v,
                "mha": 2 * H * cfg.qk_head_dim, "gqa": 2 * 2 * cfg.qk_head_dim, "mqa": 2 * cfg.qk_head_dim}
    for kind, elements in expected.items():
        cache = LayerCache()
        run(build(kind, q_lora_rank=12), x, cache=cache)
        assert cache.elements_per_token() == elements, kind
    cache = LayerCache()
    run(build("mla-absorbed"), x, cache=cache)
    assert sorted(cache.tensors) == ["c_kv", "k_rope"] and cache.tensors["c_kv"].shape == (2, 5, cfg.kv_lora_rank)


# ----------------------------------------------------------------------------------------------- errors
def test_unknown_mode_and_mode_switch_with_a_live_cache_raise():
    with pytest.raises(ValueError, match=r"mode \('fast'\) must be one of"):
        MultiHeadLatentAttention(mla_cfg(), mode="fast")
    module = build("mla-naive")
    with pytest.raises(ValueError, match="mode"):
        module.mode = "absorb"
    cache = LayerCache()
    run(module, torch.randn(1, 3, 32), cache=cache)
    module.mode = "absorbed"
    with pytest.raises(ValueError, match="attention mode"):
        run(module, torch.randn(1, 1, 32), cache=cache)
