"""minimoe.accounting against the published figures (DeepSeek-V2 Table 1, §3.1.2, App. B.1; DeepSeek-V3 §4.2,
Table 1) and against the real modules, the MTP modules included."""

import pytest
import torch

from minimoe.accounting import (
    ATTENTION_KINDS,
    attention_flops_per_token,
    count_params,
    flops_per_token,
    fp8_weight_scales,
    kv_cache_bytes,
    kv_cache_per_token,
    pretraining_gpu_hours,
    training_cost,
    wall_clock_days,
)
from minimoe.config import ModelConfig
from minimoe.model import Transformer

PUBLISHED = ["deepseek-v2-lite", "deepseek-v2", "deepseek-v3"]
TEACHING = ["tiny-dense", "tiny-v2", "tiny-v3", "small-v3"]


def preset(name, **kw):
    return ModelConfig.from_preset(name, **kw)


@pytest.mark.parametrize("name,total", [("deepseek-v2-lite", 15_706_484_224), ("deepseek-v2", 235_741_434_880),
                                        ("deepseek-v3", 671_026_419_200)])
def test_totals_match_the_published_configs_exactly(name, total):
    assert count_params(preset(name)).total == total


@pytest.mark.parametrize("name,active,active_emb,paper", [
    ("deepseek-v2-lite", 2.451e9, 2.661e9, 2.4e9),
    ("deepseek-v2", 20.852e9, 21.376e9, 21e9),
    ("deepseek-v3", 36.626e9, 37.552e9, 37e9),
])
def test_active_counts(name, active, active_emb, paper):
    p = count_params(preset(name))
    assert abs(p.active - active) < 0.5e6  # the counts of the book's Sources appendix, to the million
    assert abs(p.active_with_embedding - active_emb) < 0.5e6
    assert p.active_with_embedding - p.active == p.embedding
    assert abs(p.active - paper) / paper < 0.03  # the papers' rounded figures (2.4B is rounded down from 2.45B)


def test_breakdown_sums_and_router_bias():
    p = count_params(preset("deepseek-v3"))
    assert p.router_bias == 58 * 256  # 58 MoE layers × 256 experts (noaux_tc)
    assert count_params(preset("deepseek-v2")).router_bias == 0
    assert p.moe_routed_active * 256 == p.moe_routed * 8
    assert p.moe_shared == 58 * 3 * 7168 * 2048
    assert p.dense_ffn == 3 * 3 * 7168 * 18432


def test_tied_embeddings_count_once():
    cfg = preset("tiny-v3")
    tied = count_params(cfg.replace(tie_word_embeddings=True))
    assert count_params(cfg).total - tied.total == cfg.vocab_size * cfg.hidden_size
    assert tied.head == 0 and tied.active == tied.total - tied.embedding - tied.moe_routed + tied.moe_routed_active


def test_count_params_builds_no_module(monkeypatch):
    """Arithmetic on the config only: 671B parameters would take minutes to allocate."""
    def refuse(*args, **kwargs):
        raise AssertionError("count_params built an nn.Module")
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    assert count_params(preset("deepseek-v3")).total > 671e9


def _real_count(cfg):
    model = Transformer(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    # The noaux_tc selection bias is a float32 buffer of the Router (docs/internals.md); count it as the
    # checkpoint does. Other buffers (RoPE tables) are not parameters.
    n_bias = sum(b.numel() for name, b in model.named_buffers() if name.endswith("router.bias"))
    return n_params, n_bias


@pytest.mark.parametrize("name", TEACHING)
@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": True}, {"attention_bias": True},
                                       {"attention_type": "mha"}, {"attention_type": "mha", "attention_bias": True,
                                                                   "num_key_value_heads": 2, "head_dim": 8}])
def test_matches_real_module(name, overrides):
    cfg = preset(name, **overrides)
    n_params, n_bias = _real_count(cfg)
    p = count_params(cfg)
    assert n_bias == p.router_bias
    assert n_params + n_bias == p.total


def test_kv_cache_table_1():
    v2, v3, lite = preset("deepseek-v2"), preset("deepseek-v3"), preset("deepseek-v2-lite")
    assert kv_cache_per_token(v2) == 34_560
    assert kv_cache_per_token(v3) == 35_136
    assert kv_cache_bytes(v3) == 70_272  # BF16
    assert kv_cache_per_token(lite, "mla") == 576 * 27 == 15_552  # V2 Table 9: 15.6K
    assert kv_cache_per_token(lite, "mha") == 2 * 16 * 128 * 27 == 110_592  # V2 Table 9: 110.6K
    assert kv_cache_per_token(v3, "mqa") == 2 * 128 * 61
    assert kv_cache_per_token(v3, "gqa", n_groups=8) == 2 * 8 * 128 * 61
    assert kv_cache_per_token(v3, "gqa") == kv_cache_per_token(v3, "mha")  # n_kv_heads defaults to n_h
    assert kv_cache_per_token(v3, "mla_naive") // 61 == 40_960  # 128 heads x (192 + 128), DeepSeek-V3 inference/model.py, attn_impl "naive"
    # MLA = GQA with 2.25 groups when d_c = 4 d_h and d^R_h = d_h / 2 (V2 §2.1.4)
    assert 4 * kv_cache_per_token(v3, "mla") == kv_cache_per_token(v3, "gqa", n_groups=9)


def test_kv_head_dim_override_and_baseline():
    cfg = preset("tiny-v2", attention_type="mha", num_key_value_heads=2, head_dim=8)
    assert kv_cache_per_token(cfg, "gqa") == 2 * 2 * 8 * 2
    assert kv_cache_per_token(preset("tiny-v2"), "mha", head_dim=24) == 2 * 4 * 24 * 2


def test_kv_bytes():
    v2 = preset("deepseek-v2")
    assert kv_cache_bytes(v2, n_tokens=1000, batch_size=2, bytes_per_element=0.75) == 34_560 * 2000 * 0.75
    with pytest.raises(ValueError, match="bytes_per_element"):
        kv_cache_bytes(v2, bytes_per_element=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"attention": "flash"}, "attention"), ({"attention": "MLA"}, "attention"),
    ({"attention": "mha", "n_groups": 2}, "n_groups"), ({"attention": "gqa", "n_groups": 0}, "n_groups"),
])
def test_kv_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_per_token(preset("tiny-v3"), **kwargs)


def test_attention_kinds_listed():
    assert set(ATTENTION_KINDS) == {"mha", "gqa", "mqa", "mla", "mla_naive"}


def test_flops_per_token():
    v3 = preset("deepseek-v3")
    p = count_params(v3)
    attn = attention_flops_per_token(v3, 4096)
    assert attn == 61 * 128 * (192 + 128) * 4097
    assert attention_flops_per_token(v3, 4096, causal=False) == 2 * 61 * 128 * 320 * 4096
    assert flops_per_token(v3, 4096) == 2 * p.matmul_active + attn
    assert p.matmul_active == p.active - p.norms - p.router_bias
    assert 2 * 36e9 < flops_per_token(v3, 4096) < 2 * 37e9 + 2 * attn  # ~2 × 37B active
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(v3, 0)


def test_training_cost_table_1():
    rows = {r.stage: r for r in training_cost()}
    assert [round(rows[s].usd / 1e6, 3) for s in ("pre-training", "context extension", "post-training", "total")] \
        == [5.328, 0.238, 0.01, 5.576]
    assert rows["total"].gpu_hours == 2_788_000
    assert pretraining_gpu_hours() == 2_664_000 == rows["pre-training"].gpu_hours
    assert round(wall_clock_days(), 1) == 3.7
    assert training_cost({"x": 10}, usd_per_gpu_hour=3.0)[-1].usd == 30.0
    with pytest.raises(ValueError, match="non-negative"):
        training_cost({"x": -1})
    with pytest.raises(ValueError, match="n_gpus"):
        wall_clock_days(100, 0)


@pytest.mark.parametrize("name", ["tiny-v3", "tiny-v2", "tiny-dense"])
@pytest.mark.parametrize("block", [16, 128])
def test_fp8_weight_scales_match_the_linear_weights_of_the_model(name, block):
    """One scale per block×block block of every weight DeepSeek's checkpoint stores in FP8: the attention
    projections, dense FFNs and experts of the main model and the MTP modules; not the embedding, head, routers
    or M_k (eh_proj)."""
    import torch

    from minimoe import Transformer
    from minimoe.accounting import fp8_weight_scales

    cfg = preset(name, num_nextn_predict_layers=1)
    torch.manual_seed(0)
    model = Transformer(cfg)
    kept_in_bf16 = ("embed.weight", "head.weight", "router.weight", "proj.weight")
    expected = sum(-(-p.shape[0] // block) * -(-p.shape[1] // block) for n, p in model.named_parameters()
                   if p.dim() == 2 and not n.endswith(kept_in_bf16))
    assert fp8_weight_scales(cfg, block) == expected


def test_fp8_weight_scales_of_deepseek_v3_give_the_hubs_685b():
    from minimoe.accounting import fp8_weight_scales

    cfg = preset("deepseek-v3")
    assert fp8_weight_scales(cfg) == 41_540_496
    assert count_params(cfg).checkpoint_total + fp8_weight_scales(cfg) == 684_531_386_000
    with pytest.raises(ValueError, match="block"):
        fp8_weight_scales(cfg, 0)


# ----------------------------------------------------------------------------- the MTP modules' parameters
def tiny(name="tiny-v3", **kw):
    """A preset with D = 1 MTP module unless told otherwise."""
    return ModelConfig.from_preset(name, **{"num_nextn_predict_layers": 1, **kw})


def test_v3_mtp_module_count_and_the_hub_rounding():
    p = count_params(ModelConfig.from_preset("deepseek-v3"))  # D = 1, as the released config
    assert p.total == 671_026_419_200  # the main model, unchanged by MTP
    assert p.mtp == 187_105_280 + 2 * 7168 ** 2 + (256 * 7168 + 256 + 257 * 3 * 7168 * 2048) + 5 * 7168 + 2048
    assert p.mtp == 11_610_068_224
    assert p.mtp_copies == 2 * 129_280 * 7168 == 1_853_358_080
    assert p.checkpoint_total == 684_489_845_504 == p.total + 13_463_426_304
    assert round(p.total / 1e9) == 671 and round((p.mtp + p.mtp_copies) / 1e9, 1) == 13.5
    assert round(p.checkpoint_total / 1e9, 1) == 684.5
    # the Hub's 685B counts every stored tensor: the parameters and the float32 weight_scale_inv block scales
    scales = fp8_weight_scales(ModelConfig.from_preset("deepseek-v3"))
    assert scales == 41_540_496 and p.checkpoint_total + scales == 684_531_386_000
    assert round((p.checkpoint_total + scales) / 1e9) == 685  # rounded to the nearest billion, like 671
    assert round((p.mtp - 2 * 7168**2) / 1e9, 1) == 11.5  # README_WEIGHTS.md's MTP module: M_1 (eh_proj) left out
    assert count_params(ModelConfig.from_preset("deepseek-v3", num_nextn_predict_layers=0)).mtp == 0


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-v2", "tiny-v3"])
@pytest.mark.parametrize("D", [1, 2])
def test_count_matches_the_real_module(name, D):
    cfg = tiny(name, num_nextn_predict_layers=D)
    model = Transformer(cfg)
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for k, b in model.named_buffers() if k.endswith("router.bias"))
    assert n == count_params(cfg).total_with_mtp
