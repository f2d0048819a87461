"""minimoe.model: Transformer shapes, causality, cache == no cache, naive == absorbed, layers, bad inputs."""

import pytest
import torch

from minimoe.attention.mha import MultiHeadAttention
from minimoe.attention.mla import MultiHeadLatentAttention
from minimoe.config import ModelConfig
from minimoe.model import MLP, Transformer
from minimoe.moe.experts import DeepSeekMoE

TEACHING = ["tiny-dense", "tiny-v2", "tiny-v3", "small-v3"]


def _model(preset="tiny-v3", attn_mode="naive", dtype=torch.float64, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, **kw)
    model = Transformer(cfg, attn_mode=attn_mode).to(dtype).eval()
    for layer in model.layers:  # a non-zero selection bias exercises the V3 routing path
        if isinstance(layer.ffn, DeepSeekMoE) and layer.ffn.router.bias is not None:
            layer.ffn.router.bias.normal_(std=0.05)
    return model


@pytest.mark.parametrize("preset", TEACHING)
def test_presets_build_and_run(preset):
    model = _model(preset, dtype=torch.float32)
    cfg = model.cfg
    logits = model(torch.randint(0, cfg.vocab_size, (2, 7))).logits
    assert logits.shape == (2, 7, cfg.vocab_size) and torch.isfinite(logits).all()


def test_mha_baseline_runs():
    model = _model("tiny-v2", attention_type="mha", num_key_value_heads=2)
    assert all(isinstance(layer.attn, MultiHeadAttention) for layer in model.layers)
    assert model(torch.randint(0, 128, (2, 5))).logits.shape == (2, 5, 128)


def test_first_k_dense_replace_structure():
    model = _model("tiny-v3", num_hidden_layers=4, first_k_dense_replace=2)
    kinds = [type(layer.ffn) for layer in model.layers]
    assert kinds == [MLP, MLP, DeepSeekMoE, DeepSeekMoE]
    assert model.layers[0].ffn.w1.out_features == model.cfg.intermediate_size
    assert all(isinstance(layer.attn, MultiHeadLatentAttention) for layer in model.layers)
    assert all(type(layer.ffn) is MLP for layer in _model("tiny-dense").layers)


def test_init_and_tied_embeddings():
    model = _model("small-v3", dtype=torch.float32)
    assert abs(model.embed.weight.std().item() - model.cfg.initializer_range) < 2e-3
    assert abs(model.layers[1].ffn.router.weight.std().item() - model.cfg.initializer_range) < 4e-3
    assert torch.equal(model.norm.weight, torch.ones_like(model.norm.weight))
    assert model.head.weight is not model.embed.weight
    tied = _model("tiny-dense", tie_word_embeddings=True)
    assert tied.head.weight is tied.embed.weight


@pytest.mark.parametrize("preset, attn_mode", [("tiny-v3", "naive"), ("tiny-v3", "absorbed"), ("tiny-v2", "naive")])
def test_causality(preset, attn_mode):
    model = _model(preset, attn_mode)
    tokens = torch.randint(0, 128, (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = torch.randint(0, 128, (2, 5))
    torch.testing.assert_close(model(tokens).logits[:, :7], model(changed).logits[:, :7])


def test_naive_equals_absorbed():
    model = _model("tiny-v3", "naive")
    tokens = torch.randint(0, 128, (2, 10))
    naive = model(tokens).logits
    model.set_attn_mode("absorbed")
    assert all(layer.attn.mode == "absorbed" for layer in model.layers)
    torch.testing.assert_close(model(tokens).logits, naive)


def test_attention_mode_switches_every_block_and_restores_each_ones_own():
    model = _model("tiny-v3", "naive", num_nextn_predict_layers=1)
    model.layers[0].attn.mode = "absorbed"  # a mixed model: each block gets its own mode back
    own = [layer.attn.mode for layer in [*model.layers, model.mtp[0].block]]
    tokens = torch.randint(0, 128, (2, 10))
    naive = model(tokens).logits
    with pytest.raises(RuntimeError, match="inside"), model.attention_mode("absorbed"):
        assert all(layer.attn.mode == "absorbed" for layer in [*model.layers, model.mtp[0].block])
        torch.testing.assert_close(model(tokens).logits, naive)
        raise RuntimeError("inside the block")
    assert [layer.attn.mode for layer in [*model.layers, model.mtp[0].block]] == own
    with pytest.raises(ValueError, match="attn_mode"):
        model.attention_mode("fast").__enter__()


@pytest.mark.parametrize("preset, attn_mode, extra", [
    ("tiny-v3", "naive", {}), ("tiny-v3", "absorbed", {}), ("tiny-v2", "absorbed", {}),
    ("tiny-v2", "naive", {"attention_type": "mha", "num_key_value_heads": 2}),
])
def test_cache_equals_full_rerun(preset, attn_mode, extra):
    model = _model(preset, attn_mode, **extra)
    tokens = torch.randint(0, 128, (2, 11))
    full = model(tokens).logits
    cache = model.new_cache()
    pieces = [model(tokens[:, :5], cache=cache).logits, model(tokens[:, 5:8], cache=cache).logits]
    pieces += [model(tokens[:, t:t + 1], cache=cache).logits for t in range(8, 11)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)
    assert len(cache) == len(model.layers) and len(cache[0]) == 11


def test_absorbed_cache_holds_only_the_latent():
    model = _model("tiny-v3", "absorbed")
    cache = model.new_cache()
    model(torch.randint(0, 128, (1, 4)), cache=cache)
    cfg = model.cfg
    assert cache[0].elements_per_token() == cfg.kv_lora_rank + cfg.qk_rope_head_dim


def test_left_padding_with_positions_equals_unpadded():
    model = _model("tiny-v3", "absorbed")
    row = torch.randint(1, 128, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), row], dim=1)  # (1, 9)
    mask = torch.tensor([[False] * 3 + [True] * 6])
    positions = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4, 5]])
    torch.testing.assert_close(model(padded, position_ids=positions, padding_mask=mask).logits[:, 3:],
                               model(row).logits)


def test_routing_records_one_per_moe_layer_and_no_module_state():
    model = _model("tiny-v3", num_hidden_layers=3, first_k_dense_replace=1)
    attributes = {name: set(vars(module)) for name, module in model.named_modules()}
    out = model(torch.randint(0, 128, (2, 6)))
    assert {name: set(vars(module)) for name, module in model.named_modules()} == attributes  # nothing kept
    assert [r.layer for r in out.routing] == [1, 2]
    record = out.routing[1]
    assert record.scores.shape == record.selection_scores.shape == record.group_mask.shape == (2, 6, 8)
    assert record.experts.shape == record.gate_weights.shape == (2, 6, 2) and record.dropped is None
    assert record.scores.dtype == record.gate_weights.dtype == torch.float32
    torch.testing.assert_close(record.selection_scores.gather(-1, record.experts),
                               (record.scores + model.layers[2].ffn.router.bias.float()).gather(-1, record.experts))


def test_aux_loss_from_the_config_and_explicit_bias_update():
    from minimoe.moe.balance import sequence_balance_loss
    model = _model("tiny-v3", num_hidden_layers=2, aux_loss_alpha=0.1, seq_aux=True, bias_update_speed=0.01)
    tokens = torch.randint(0, 128, (3, 6))
    out = model(tokens)
    unbiased = [r.scores.topk(2, dim=-1).indices for r in out.routing]  # DeepSeek-V3 Eq. (18)
    expected = sum(sequence_balance_loss(r.scores, i, 8, 0.1) for r, i in zip(out.routing, unbiased))
    torch.testing.assert_close(out.balance_loss, expected.to(out.balance_loss.dtype))
    assert out.balance_loss.requires_grad and float(out.mtp_loss) == 0.0  # no MTP modules: no MTP loss
    torch.testing.assert_close(out.aux_loss, out.balance_loss)
    bias = model.layers[1].ffn.router.bias
    before = bias.clone()
    model(tokens)  # a forward alone moves nothing
    torch.testing.assert_close(bias, before)
    model.update_routing_bias(out.routing)
    assert (bias - before).abs().max() == pytest.approx(0.01)
    dense = _model("tiny-dense")
    out = dense(torch.randint(0, 128, (1, 3)))
    assert out.routing == [] and float(out.aux_loss) == 0.0


@pytest.mark.parametrize("preset", ["tiny-v3", "tiny-dense"])
def test_empty_batch_returns_empty_logits(preset):
    model = _model(preset)
    assert model(torch.zeros(0, 5, dtype=torch.long)).logits.shape == (0, 5, 128)
    assert model(torch.zeros(2, 0, dtype=torch.long)).logits.shape == (2, 0, 128)


def test_bad_inputs_raise_clear_errors():
    model = _model("tiny-v3")
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.rand(1, 4))
    for dtype in (torch.uint8, torch.bool):
        with pytest.raises(ValueError, match=str(dtype).removeprefix("torch.")):
            model(torch.ones(1, 4, dtype=dtype))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"vocab_size=128"):
        model(torch.tensor([[1, 128]]))
    with pytest.raises(ValueError, match=r"vocab_size"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 257, dtype=torch.long))
    cache = model.new_cache()
    model(torch.zeros(1, 250, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 7, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="new_cache"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache[:1])
    with pytest.raises(ValueError, match="attn_mode"):
        model.set_attn_mode("fast")
    with pytest.raises(ValueError, match="attention_type='mla'"):
        Transformer(ModelConfig.from_preset("tiny-dense", attention_type="mha"), attn_mode="absorbed")
