"""minimoe.attention.rope: RoPE layouts and YaRN against Hugging Face, and the softmax scale."""

import pytest
import torch

from _attention import YARN, mla_cfg
from minimoe.attention import RotaryEmbedding, apply_rope, rope_inv_freq, softmax_scale, yarn_get_mscale
from minimoe.config import ModelConfig


@pytest.fixture
def hf():
    """transformers' DeepSeek-V3 modelling: only the equality tests need it (the invariants run without it)."""
    return pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")


PERM = torch.cat((torch.arange(0, 8, 2), torch.arange(1, 8, 2)))  # interleaved -> rotate-half order for d_r = 8


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
