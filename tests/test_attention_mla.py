"""minimoe.attention.mla: equal to transformers' DeepseekV3Attention; naive == absorbed; gradients; modes."""

import pytest
import torch

from _attention import ROPES, YARN, build, mla_cfg, run
from minimoe.attention import LayerCache, MultiHeadLatentAttention, RotaryEmbedding


@pytest.fixture
def hf():
    """transformers' DeepSeek-V3 modelling: only the equality tests need it (the invariants run without it)."""
    return pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")


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


@pytest.mark.parametrize("kind", ["mla-naive", "mla-absorbed", "gqa"])
def test_gradcheck_float64(kind):
    module = build(kind, torch.float64, q_lora_rank=6, hidden_size=8, num_attention_heads=2, kv_lora_rank=6,
                   qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4)
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: run(module, x, torch.tensor([[3, 70, 71, 200]])), (x,))


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
