"""minimoe.fp8 against DeepSeek-V3's kernel semantics, torch's float8 casts and the float32 linear layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minimoe import ModelConfig, Transformer
from minimoe.fp8 import (
    FORMATS,
    FP8Linear,
    accumulate,
    dequantize,
    fake_quantize,
    fp8_gemm,
    fp8_modules,
    grid,
    quantize,
    round_to_bits,
    to_fp8,
)


def kernel_act_quant(x: torch.Tensor, block_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 inference/kernel.py ``act_quant`` (scale_fmt=None), written out element by element: per
    contiguous run of ``block_size`` elements of the last dim, amax = max(max|x|, 1e-4), s = amax / 448,
    y = (x / s).to(float8_e4m3fn)."""
    flat = x.float().reshape(-1, block_size)
    y = torch.empty(flat.shape, dtype=torch.float8_e4m3fn)
    s = torch.empty(flat.shape[0])
    for i, row in enumerate(flat):
        amax = max(row.abs().max().item(), 1e-4)
        s[i] = amax / 448.0
        y[i] = (row / s[i]).to(torch.float8_e4m3fn)
    return y.reshape(x.shape), s.reshape(*x.shape[:-1], x.shape[-1] // block_size)


def kernel_weight_dequant(q: torch.Tensor, s: torch.Tensor, block_size: int = 128) -> torch.Tensor:
    """DeepSeek-V3 inference/kernel.py ``weight_dequant``: y[i, j] = float(q[i, j]) · s[i // 128, j // 128]."""
    M, N = q.shape
    rows = torch.arange(M)[:, None] // block_size
    cols = torch.arange(N)[None, :] // block_size
    return q.float() * s[rows, cols]


def with_outliers(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    x.view(-1)[torch.randint(x.numel(), (max(x.numel() // 500, 1),), generator=g)] *= 300.0  # rare outliers
    return x


def test_formats_and_grids():
    for fmt, n, top in (("e4m3", 253, 448.0), ("e5m2", 247, 57344.0)):
        values = grid(fmt)
        assert len(values) == n and values.max().item() == top == FORMATS[fmt].max == torch.finfo(
            FORMATS[fmt].dtype).max
        assert torch.equal(values.to(FORMATS[fmt].dtype).float(), values)  # every grid point is representable
        spec = FORMATS[fmt]
        assert 1 + spec.exponent_bits + spec.mantissa_bits == 8
        assert top == (2 - 2 ** -spec.mantissa_bits * (1 if fmt == "e5m2" else 2)) * 2.0 ** (
            2**spec.exponent_bits - 1 - spec.bias - (1 if fmt == "e5m2" else 0))


def test_act_quant_semantics_with_outliers_and_zero_blocks():
    x = with_outliers(6, 512)
    x[2, 128:256] = 0.0  # an all-zero tile
    x[4, :128] = 1e-6  # a tile below the amax floor
    q, s = quantize(x, "e4m3", (1, 128))
    q_ref, s_ref = kernel_act_quant(x)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (6, 4)
    torch.testing.assert_close(s, s_ref, rtol=0, atol=0)
    assert torch.equal(q.float(), q_ref.float())
    assert torch.isfinite(q.float()).all() and (q[2, 128:256].float() == 0).all()
    assert s[2, 1].item() == pytest.approx(1e-4 / 448)
    # torch's cast: the largest element of every tile maps to ±448 exactly
    assert (q.float().abs().reshape(6, 4, 128).amax(-1)[s > 1e-4 / 448] == 448).all()


def test_weight_blocks_against_weight_dequant():
    w = with_outliers(256, 384, seed=1)
    w[128:, 256:] = 0.0
    q, s = quantize(w, "e4m3", (128, 128))
    assert s.shape == (2, 3) and q.shape == w.shape
    amax = w.reshape(2, 128, 3, 128).abs().amax(dim=(1, 3)).clamp(min=1e-4)
    torch.testing.assert_close(s, amax / 448, rtol=0, atol=0)
    torch.testing.assert_close(dequantize(q, s, (128, 128)), kernel_weight_dequant(q, s), rtol=0, atol=0)
    assert (dequantize(q, s, (128, 128))[128:, 256:] == 0).all()


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("block", [(1, 128), (128, 128), (4, 32), None])
def test_round_trip_error_is_fp8_rounding(fmt, block):
    x = with_outliers(256, 256, seed=2)
    x_hat = fake_quantize(x, fmt, block)
    _, s = quantize(x, fmt, block)
    # dequantize(q) = s · cast(x / s): the cast is torch's own, element by element
    b0, b1 = block or x.shape
    scale = s.repeat_interleave(b0, 0).repeat_interleave(b1, 1)
    torch.testing.assert_close(x_hat, (x / scale).to(FORMATS[fmt].dtype).float() * scale, rtol=0, atol=0)
    # relative error of a normal number is at most half an ulp: 2^-4 (E4M3) or 2^-3 (E5M2)
    normal = (x / scale).abs() >= torch.finfo(FORMATS[fmt].dtype).smallest_normal
    rel = ((x_hat - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0 ** -(FORMATS[fmt].mantissa_bits + 1) + 1e-6


def test_leading_dims_shapes_and_errors():
    x = torch.randn(2, 3, 256)
    q, s = quantize(x, block=(1, 128))
    assert q.shape == x.shape and s.shape == (2, 3, 2)
    with pytest.raises(ValueError, match=r"\(3, 256\).*\(2, 128\)"):
        quantize(x, block=(2, 128))
    with pytest.raises(ValueError, match="at least 2"):
        quantize(torch.randn(128))
    with pytest.raises(ValueError, match="fmt"):
        quantize(x, fmt="e3m4")
    with pytest.raises(ValueError, match="scale has shape"):
        dequantize(q, s[..., :1], (1, 128))


def test_per_tensor_scaling_loses_small_values_to_an_outlier():
    x = torch.randn(64, 512)
    x[0, 0] = 1e5  # E4M3 spans 448 / 2^-9 ≈ 2.3e5: per tensor, the other rows fall into the subnormals

    def error(block):  # mean relative error of the rows without the outlier
        return ((fake_quantize(x, block=block) - x).abs() / x.abs())[1:].mean()

    assert error((1, 128)) < 0.03 and error(None) > 0.2


def test_round_to_bits():
    x = torch.tensor([1.0, 1 + 2**-13, 1 + 2**-14, 1 + 3 * 2**-14, -(1 + 3 * 2**-14)])
    assert round_to_bits(x, 14).tolist() == [1.0, 1 + 2**-13, 1.0, 1 + 4 * 2**-14, -(1 + 4 * 2**-14)]
    assert round_to_bits(x, 14, "truncate").tolist() == [1.0, 1 + 2**-13, 1.0, 1 + 2 * 2**-14, -(1 + 2 * 2**-14)]
    assert round_to_bits(torch.zeros(3), 14).tolist() == [0.0, 0.0, 0.0]


def test_gemm_error_figures_at_k_4096():
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(4, 4096, generator=g), torch.rand(128, 4096, generator=g)
    ref = fake_quantize(x, block=(1, 128)).double() @ fake_quantize(w, block=(128, 128)).double().T
    err = {}
    for rounding in ("nearest", "truncate"):
        for promote in (None, 128):
            c = fp8_gemm(x, w, promote_every=promote, rounding=rounding)
            err[rounding, promote] = ((c - ref).abs() / ref).max().item()
    exact = fp8_gemm(x, w, bits=None)
    assert ((exact - ref).abs() / ref).max() < 1e-6
    for rounding in ("nearest", "truncate"):
        assert err[rounding, 128] < err[rounding, None] / 20  # promotion every 128 removes most of the error
    # truncation (the hardware's rule, DeepSeek-V3 §3.5.2) errs above the paper's ~2%, rounding to nearest below
    assert 1e-3 < err["nearest", None] < 0.02 < err["truncate", None] < 0.2
    assert err["nearest", 128] < 1e-3


def test_accumulation_truncates_by_default():
    """DeepSeek-V3 §3.5.2: the tensor core truncates the bits beyond its 14; round-to-nearest is the option."""
    p = torch.rand(3, 256, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(accumulate(p), accumulate(p, 14, 128, "truncate"), rtol=0, atol=0)
    assert (accumulate(p, 14, None) <= p.double().sum(-1)).all()  # positive terms cut toward zero: never above
    assert not torch.equal(accumulate(p, 14, None), accumulate(p, 14, None, "nearest"))
    x, w = torch.rand(2, 256), torch.rand(128, 256)
    torch.testing.assert_close(fp8_gemm(x, w), fp8_gemm(x, w, rounding="truncate"), rtol=0, atol=0)


def test_accumulate_shapes_and_errors():
    p = torch.rand(3, 256)
    torch.testing.assert_close(accumulate(p, None), p.sum(-1))
    assert accumulate(p, 14, 128).shape == (3,)
    with pytest.raises(ValueError, match="divisible"):
        accumulate(p, 14, 100)


@pytest.mark.parametrize("scaling", ["block", "tensor"])
def test_fp8_linear_forward_backward_close_to_float32(scaling):
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 128, bias=True)
    fp8 = FP8Linear.from_linear(linear, block=128, scaling=scaling)
    assert fp8.weight is linear.weight and fp8.bias is linear.bias
    x = torch.randn(4, 8, 256, requires_grad=True)
    y_ref = linear(x)
    y = fp8(x)
    assert y.shape == (4, 8, 128)
    assert ((y - y_ref).norm() / y_ref.norm()) < 0.05  # E4M3 keeps 3 mantissa bits: a few percent
    grad_out = torch.randn_like(y)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, linear.weight), grad_out)
    dx, dw, db = torch.autograd.grad(y, (x, fp8.weight, fp8.bias), grad_out)
    assert ((dx - dx_ref).norm() / dx_ref.norm()) < 0.05
    assert ((dw - dw_ref).norm() / dw_ref.norm()) < 0.05
    torch.testing.assert_close(db, grad_out.sum((0, 1)))
    assert dx.abs().sum() > 0 and dw.abs().sum() > 0


def test_fp8_linear_uses_quantised_operands_in_every_gemm():
    torch.manual_seed(1)
    fp8 = FP8Linear(128, 128, bias=False, block=128)
    x = torch.randn(16, 128, requires_grad=True)
    grad_out = torch.randn(16, 128)
    y = fp8(x)
    xq, wq, gq = fake_quantize(x.detach()), fake_quantize(fp8.weight.detach(), block=(128, 128)), fake_quantize(
        grad_out)
    torch.testing.assert_close(y, xq @ wq.T)  # Fprop
    y.backward(grad_out)
    torch.testing.assert_close(x.grad, gq @ wq)  # Dgrad
    torch.testing.assert_close(fp8.weight.grad, gq.T @ xq)  # Wgrad


def test_fp8_linear_rejects_bad_settings():
    with pytest.raises(ValueError, match="divisible by block"):
        FP8Linear(100, 128, block=128)
    with pytest.raises(ValueError, match="scaling"):
        FP8Linear(128, 128, scaling="row")


def test_to_fp8_swaps_only_the_ffns_and_trains():
    cfg = ModelConfig.from_preset("tiny-v3", num_hidden_layers=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = Transformer(cfg)
    tokens = torch.randint(cfg.vocab_size, (2, 16))
    before = model(tokens).logits.detach()
    to_fp8(model, block=16)
    where = fp8_modules(model)
    fp8_names = {name for name, is_fp8 in where.items() if is_fp8}
    assert fp8_names and all(name.split(".")[-1] in ("w1", "w2", "w3") and ".ffn." in name for name in fp8_names)
    kept = {name for name, is_fp8 in where.items() if not is_fp8}
    assert {"embed", "head"} <= kept
    assert any(name.endswith("router") for name in kept) and any(".attn." in name for name in kept)
    for module in model.modules():  # norms and everything outside the FFNs keep float32 parameters
        if not isinstance(module, FP8Linear):
            assert all(p.dtype == torch.float32 for p in module.parameters(recurse=False))
    out = model(tokens)
    assert ((out.logits - before).norm() / before.norm()) < 0.1
    loss = F.cross_entropy(out.logits.flatten(0, 1), tokens.flatten()) + out.aux_loss
    loss.backward()
    expert = model.layers[-1].ffn.experts[0].w1
    assert isinstance(expert, FP8Linear) and model.embed.weight.grad is not None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.layers[0].ffn.w2.weight.grad.abs().sum() > 0
