"""The judge of a4_efficient_training: block-wise FP8 quantisation, the block-wise FP8 GEMM with per-chunk scales,
the MTP module's input and loss, logit distillation (14 points over 32 items).

References: the judge's own ``minimoe.fp8``, ``minimoe.mtp`` and ``minimoe.distill`` (trusted), and for the GEMM
also a float64 product of the dequantised operands; the sandbox's copy of those modules raises "not available
while grading" in everything the lab asks students to write (:data:`STUBS`). ``minimoe.fp8.round_to_bits``, the
tool the lab gives for the limited accumulator, stays available.
"""

from __future__ import annotations

import torch

from judge.core import Failed, Item, call, check_form, check_tensor, tensors, unchanged
from judge.remote import Module
from minimoe import distill, fp8, mtp

STUBS = {"minimoe.fp8": ["quantize", "dequantize", "fake_quantize", "accumulate", "fp8_gemm"],
         "minimoe.mtp": ["mtp_combine", "mtp_cross_entropies", "mtp_loss"],
         "minimoe.distill": ["kd_loss"]}
F32, F64, BF16, E4M3 = torch.float32, torch.float64, torch.bfloat16, torch.float8_e4m3fn
N_C = 128  # the GEMM's tile width along K, and its promotion interval (DeepSeek-V3 §3.3.2)


def _int(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def _finite(fn: str, *values: torch.Tensor) -> None:
    """NaN or inf anywhere fails first: the cause (a division by a zero max-abs, ...) before its consequences."""
    if not all(bool(torch.isfinite(v.double()).all()) for v in values):
        raise Failed(f"{fn}: NaN or inf in the result")


# -- Part 1: quantize, dequantize ---------------------------------------------------------------------------------
def _activation(gen, shape, dtype, block, outliers=3, zero_block=False) -> torch.Tensor:
    """Gaussian values with a few outliers of 1e2 to 1e5 (either sign), and optionally one all-zero block (the
    edge case has its own items: a missing 1e-4 floor costs those, not the main ones)."""
    x = torch.randn(*shape, generator=gen, dtype=F64)
    flat = x.view(-1)
    at = torch.randint(0, flat.numel(), (outliers,), generator=gen)
    size = 10 ** (2 + 3 * torch.rand(outliers, generator=gen, dtype=F64))
    flat[at] = torch.where(torch.rand(outliers, generator=gen) < 0.5, -size, size)
    if zero_block:
        i, j = _int(gen, 0, shape[-2] // block[0]), _int(gen, 0, shape[-1] // block[1])
        x[..., i * block[0]:(i + 1) * block[0], j * block[1]:(j + 1) * block[1]] = 0.0
    return x.to(dtype)


def _codes_close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """E4M3 codes equal to the reference's but for rare rounding ties (a division written as a multiplication by
    448 / amax): at most one E4M3 step, in at most 0.1% of the elements."""
    g, w = got.double(), want.double()
    d = (g - w).abs()
    step = (w.abs() / 8).clamp_min(2.0 ** -9)  # one E4M3 step at |w| (the subnormal step below 2^-6)
    return bool((d <= step * 1.0001).all()) and int((d > 0).sum()) <= max(2, d.numel() // 1000)


def _quantize_case(remote, x: torch.Tensor, block: tuple[int, int]) -> None:
    reply = call(remote, "quantize", x, block, full=True)
    unchanged("quantize", reply, (x,))
    q, s = tensors("quantize", reply["value"], 2)
    want_q, want_s = fp8.quantize(x, "e4m3", block)
    if q.dtype != E4M3 or s.dtype != F32:
        raise Failed("quantize: wrong dtype")
    if q.shape != want_q.shape or s.shape != want_s.shape:
        raise Failed("quantize: wrong shape")
    _finite("quantize", q, s)
    if not float(((s.double() - want_s.double()).abs() / want_s.double()).max()) <= 1e-6:
        raise Failed("quantize: wrong scale")
    if not _codes_close(q, want_q):
        raise Failed("quantize: wrong FP8 codes")


def _quantize(cases):
    def check(remote, gen):
        for shape, block, dtype in cases:
            _quantize_case(remote, _activation(gen, shape, dtype, block), block)
    return check


def _quantize_zero(remote, gen):
    """All-zero tiles and blocks, and a tensor of zeros: q zeros and the floored scale 1e-4 / 448, never NaN."""
    x = torch.randn(4, 256, generator=gen)
    x[_int(gen, 0, 4), :128] = 0.0
    x[_int(gen, 0, 4), 128:] = 0.0
    _quantize_case(remote, x, (1, 128))
    w = 0.02 * torch.randn(256, 384, generator=gen)
    w[:128, 128:256] = 0.0
    _quantize_case(remote, w, (128, 128))
    _quantize_case(remote, torch.zeros(2, 3, 64), (1, 32))


def _quantize_floor(remote, gen):
    """Blocks whose max-abs is below the 1e-4 floor, a tile whose largest value is a lone negative one."""
    x = torch.randn(4, 256, generator=gen)
    x[1, 128:] *= 1e-6
    x[2, :128] = 0.0
    x[2, _int(gen, 0, 128)] = -3.5
    x[3, _int(gen, 128, 256)] = -1e5
    _quantize_case(remote, x, (1, 128))
    w = 0.02 * torch.randn(256, 384, generator=gen)
    w[128:, :128] *= 1e-5
    _quantize_case(remote, w, (128, 128))


def _rel_each(fn: str, got, want: torch.Tensor, tol: float) -> None:
    """Type, dtype, shape, finiteness, then every value relative to the reference's own (zeros must be zeros)."""
    check_form(fn, got, want)
    _finite(fn, got)
    if not float(((got.double() - want.double()).abs() / want.double().abs().clamp_min(1e-30)).max()) <= tol:
        raise Failed(f"{fn}: wrong value")


def _dequantize_case(remote, q, s, block) -> None:
    reply = call(remote, "dequantize", q, s, block, full=True)
    unchanged("dequantize", reply, (q, s))
    _rel_each("dequantize", reply["value"], fp8.dequantize(q, s, block), 1e-6)


def _dequantize(cases):
    def check(remote, gen):
        for shape, block in cases:
            codes = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
            codes[(codes & 0x7F) == 0x7F] = 0x38  # no NaN patterns (S.1111.111): 1.0 instead
            s = torch.rand(*shape[:-2], shape[-2] // block[0], shape[-1] // block[1], generator=gen) * 0.1 + 1e-3
            _dequantize_case(remote, codes.view(E4M3), s, block)
    return check


def _dequantize_quantized(remote, gen):
    """What quantize gives for outliers, an all-zero tile and a tile below the floor."""
    x = torch.randn(4, 256, generator=gen)
    x[0, _int(gen, 0, 256)], x[1, :128], x[2, 128:] = 3e4, 0.0, 1e-7
    _dequantize_case(remote, *fp8.quantize(x, "e4m3", (1, 128)), (1, 128))


# -- Part 2: blockwise_fp8_gemm -----------------------------------------------------------------------------------
def _gemm_operands(gen, M: int, K: int, N: int, zero_tile: bool = False):
    """(qx, sx, qw, sw): activations with outliers in 1x128 tiles, weights in 128x128 blocks, quantised by the
    reference; the scales differ from chunk to chunk along K."""
    x = _activation(gen, (M, K), F32, (1, N_C), zero_block=True) if zero_tile else torch.randn(M, K, generator=gen) * (
        10 ** (2 * torch.rand(M, K // N_C, generator=gen))).repeat_interleave(N_C, 1)
    w = 0.05 * torch.randn(N, K, generator=gen) * (4 ** torch.rand(N // N_C, K // N_C, generator=gen)
                                                   ).repeat_interleave(N_C, 0).repeat_interleave(N_C, 1)
    return (*fp8.quantize(x, "e4m3", (1, N_C)), *fp8.quantize(w, "e4m3", (N_C, N_C))), (x, w)


def _gemm_float64(qx, sx, qw, sw) -> torch.Tensor:
    """x W^T of the dequantised operands, in float64 (every partial sum exact to float64)."""
    x = qx.double() * sx.double().repeat_interleave(N_C, -1)
    w = qw.double() * sw.double().repeat_interleave(N_C, 0).repeat_interleave(N_C, 1)
    return x @ w.T


def _gemm_limited(qx, sx, qw, sw, bits: int) -> torch.Tensor:
    """Per chunk of N_C along K: the code products summed by minimoe's ``bits``-bit accumulator, then promoted to
    float32 and multiplied by the chunk's two scales (DeepSeek-V3 §3.3.2)."""
    out = torch.zeros(qx.shape[0], qw.shape[0])
    for c in range(qx.shape[1] // N_C):
        chunk = slice(c * N_C, (c + 1) * N_C)
        products = qx[:, None, chunk].float() * qw[None, :, chunk].float()  # (M, N, N_C)
        # (M, N) in the limited accumulator, rounding to nearest as the lab's round_to_bits does by default
        partial = fp8.accumulate(products, bits, promote_every=None, rounding="nearest")
        out += partial * sx[:, c, None] * sw[:, c].repeat_interleave(N_C)[None, :]
    return out


def _gemm_call(remote, qx, sx, qw, sw, bits):
    reply = call(remote, "blockwise_fp8_gemm", qx, sx, qw, sw, bits, full=True)
    unchanged("blockwise_fp8_gemm", reply, (qx, sx, qw, sw))
    return reply["value"]


def _gemm_exact(M: int, K: int, N: int, zero_tile: bool = False):
    def check(remote, gen):
        (qx, sx, qw, sw), _ = _gemm_operands(gen, M, K, N, zero_tile)
        got = _gemm_call(remote, qx, sx, qw, sw, None)
        check_tensor("blockwise_fp8_gemm", got, _gemm_float64(qx, sx, qw, sw).float(), 1e-5)
    return check


def _gemm_vs_minimoe(remote, gen):
    """The same product as minimoe.fp8.fp8_gemm (which multiplies dequantised copies) with float32 sums."""
    (qx, sx, qw, sw), (x, w) = _gemm_operands(gen, 6, 512, 256, zero_tile=True)
    got = _gemm_call(remote, qx, sx, qw, sw, None)
    check_tensor("blockwise_fp8_gemm", got, fp8.fp8_gemm(x, w, bits=None), 1e-5)


def _gemm_bits(M: int, K: int, N: int, bits: int):
    def check(remote, gen):
        (qx, sx, qw, sw), _ = _gemm_operands(gen, M, K, N)
        got = _gemm_call(remote, qx, sx, qw, sw, bits)
        check_tensor("blockwise_fp8_gemm", got, _gemm_limited(qx, sx, qw, sw, bits), 1e-5,
                     f"wrong value with a {bits}-bit accumulator")
    return check


# -- Part 3: mtp_combine, mtp_loss --------------------------------------------------------------------------------
def _combine(b: int, t: int, d: int, dtype: torch.dtype, emb_scale: float = 1.0):
    """nn.RMSNorm norms with their own weights and an nn.Linear(2d, d) projection, rebuilt in the sandbox."""
    def check(remote, gen):
        h = torch.randn(b, t, d, generator=gen, dtype=F64).to(dtype)
        e = (emb_scale * torch.randn(b, t, d, generator=gen, dtype=F64)).to(dtype)
        norms = [torch.nn.RMSNorm(d, eps=1e-6, dtype=dtype) for _ in range(2)]
        proj = torch.nn.Linear(2 * d, d, bias=False, dtype=dtype)
        with torch.no_grad():
            for norm in norms:
                norm.weight.copy_(1 + 0.5 * torch.randn(d, generator=gen, dtype=F64))
            proj.weight.copy_(torch.randn(d, 2 * d, generator=gen, dtype=F64) / (2 * d) ** 0.5)
            want = mtp.mtp_combine(h, e, norms[0], norms[1], proj)
        dt = str(dtype).removeprefix("torch.")
        specs = [Module("RMSNorm", None, dict(n.state_dict()), dt, {"normalized_shape": d, "eps": 1e-6})
                 for n in norms]
        spec_p = Module("Linear", None, dict(proj.state_dict()), dt, {"in_features": 2 * d, "out_features": d,
                                                                      "bias": False})
        reply = call(remote, "mtp_combine", h, e, specs[0], specs[1], spec_p, full=True)
        unchanged("mtp_combine", reply, (h, e))
        check_tensor("mtp_combine", reply["value"], want, 1e-12 if dtype == F64 else 1e-5)
    return check


def _mtp_inputs(gen, b, t, depth, v, dtype):
    tokens = torch.randint(0, v, (b, t), generator=gen)
    logits = [(3 * torch.randn(b, t - k, v, generator=gen, dtype=F64)).to(dtype) for k in range(1, depth + 1)]
    return logits, tokens


def _mtp(cases, value: bool = True, grad: bool = True):
    """The loss (and its gradient to each module's logits) for each (B, T, D, V, λ, dtype)."""
    def check(remote, gen):
        for b, t, depth, v, weight, dtype in cases:
            logits, tokens = _mtp_inputs(gen, b, t, depth, v, dtype)
            mine = [lg.clone().requires_grad_() for lg in logits]
            want = mtp.mtp_loss(mine, tokens, weight)
            reply = call(remote, "mtp_loss", logits, tokens, weight, grad=(0,) if grad else (), full=True)
            unchanged("mtp_loss", reply, (logits, tokens))
            if value:
                check_tensor("mtp_loss", reply["value"], want.detach(), 1e-5)
            if grad:
                got = reply.get("grads")
                if not isinstance(got, tuple) or len(got) != depth:
                    raise Failed("mtp_loss: no gradient reaches the logits")
                for g, w in zip(got, torch.autograd.grad(want, mine)):
                    check_tensor("mtp_loss", torch.zeros_like(w) if g is None else g, w, 1e-5, "wrong gradient")
    return check


# -- Part 4: kd_loss ----------------------------------------------------------------------------------------------
def _padded(gen, b: int, t: int) -> torch.Tensor:
    """Rows of random lengths (each at least 1), padding after them."""
    return torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)


def _kd_case(remote, gen, mask, v, temperature, direction, sdtype, tdtype, spread=2.0, grad=False):
    b, t = mask.shape
    s = (spread * torch.randn(b, t, v, generator=gen, dtype=F64)).to(sdtype)
    teacher = (spread * torch.randn(b, t, v, generator=gen, dtype=F64)).to(tdtype)
    mine = s.clone().requires_grad_()
    want = distill.kd_loss(mine, teacher, mask, temperature=temperature, direction=direction)
    tol = 1e-9 if sdtype == F64 else 1e-5
    reply = call(remote, "kd_loss", s, teacher, mask, temperature, direction, grad=(0, 1) if grad else (),
                 full=True)
    unchanged("kd_loss", reply, (s, teacher, mask))
    check_tensor("kd_loss", reply["value"], want.detach(), tol)
    if grad:
        got = reply.get("grads")
        if not isinstance(got, tuple) or len(got) != 2 or type(got[0]) is not torch.Tensor:
            raise Failed("kd_loss: no gradient reaches the student's logits")
        if got[1] is not None and (type(got[1]) is not torch.Tensor or bool(got[1].abs().max() > 0)):
            raise Failed("kd_loss: a gradient reaches the teacher (detach its logits)")
        want_grad, = torch.autograd.grad(want, mine)
        check_tensor("kd_loss", got[0], want_grad, tol, "wrong gradient")


def _kd(cases, grad: bool = False):
    def check(remote, gen):
        for b, t, v, temperature, direction, sdtype, tdtype in cases:
            _kd_case(remote, gen, _padded(gen, b, t), v, temperature, direction, sdtype, tdtype, grad=grad)
    return check


def _kd_answer_only(remote, gen):
    """Masks that exclude a prompt and the padding (rows of different lengths), in both directions."""
    lengths = torch.randint(1, 6, (3, 1), generator=gen)
    answer = (torch.arange(7) >= 1) & (torch.arange(7) < lengths + 1)
    for direction in ("forward", "reverse"):
        _kd_case(remote, gen, answer, 8, 2.0, direction, F64, F64)


def _kd_empty(remote, gen):
    """A mask that selects nothing: 0, not NaN."""
    for direction in ("forward", "reverse"):
        _kd_case(remote, gen, torch.zeros(2, 5, dtype=torch.bool), 7, 2.0, direction, F32, F32)


def _kd_large(remote, gen):
    """Logits of size ~100 (softmax underflows to 0 before its log)."""
    for direction in ("forward", "reverse"):
        _kd_case(remote, gen, torch.ones(2, 4, dtype=torch.bool), 12, 1.0, direction, F32, F32, spread=100.0)


KD_MAIN = [(2, 6, 11, 1.0, F32, F32), (2, 7, 9, 0.5, F64, F64), (4, 3, 6, 3.0, F32, F32)]
MTP_MAIN = [(2, 9, 1, 11, 0.3, F32), (3, 10, 2, 7, 0.1, F32), (4, 6, 3, 13, 0.3, F32)]
ITEMS = [
    Item("test_quantize", "1x128 tiles, outliers up to 1e5", 0.5, _quantize([((6, 384), (1, 128), F32)])),
    Item("test_quantize", "128x128 weight blocks", 0.5, _quantize([((256, 384), (128, 128), F32)])),
    Item("test_quantize", "leading dimensions and other block shapes", 0.25,
         _quantize([((2, 3, 256), (1, 128), F32), ((2, 64, 128), (64, 64), F32)])),
    Item("test_quantize", "bfloat16 and float64 inputs", 0.25,
         _quantize([((5, 96), (1, 32), BF16), ((8, 16), (4, 8), F64)])),
    Item("test_quantize", "edge case: all-zero tiles, blocks and tensors", 0.25, _quantize_zero),
    Item("test_quantize", "edge case: blocks below the 1e-4 floor, a negative maximum", 0.25, _quantize_floor),
    Item("test_dequantize", "1x128 tiles and 128x128 blocks", 0.5,
         _dequantize([((6, 384), (1, 128)), ((256, 384), (128, 128))])),
    Item("test_dequantize", "leading dimensions and other block shapes", 0.25,
         _dequantize([((2, 3, 64), (1, 32)), ((3, 12, 20), (6, 5))])),
    Item("test_dequantize", "edge case: quantised outliers, zero and sub-floor tiles", 0.25, _dequantize_quantized),
    Item("test_blockwise_fp8_gemm", "float32 partial sums, scales per chunk (float64 reference)", 1.0,
         _gemm_exact(5, 384, 256)),
    Item("test_blockwise_fp8_gemm", "the product minimoe.fp8.fp8_gemm computes", 0.5, _gemm_vs_minimoe),
    Item("test_blockwise_fp8_gemm", "a 14-bit accumulator promoted to FP32 every 128", 0.75, _gemm_bits(4, 512, 256, 14)),
    Item("test_blockwise_fp8_gemm", "edge case: an 8-bit accumulator (promotion matters more)", 0.25,
         _gemm_bits(3, 384, 128, 8)),
    Item("test_blockwise_fp8_gemm", "edge case: one chunk (K = 128), one row", 0.25, _gemm_exact(1, 128, 256)),
    Item("test_blockwise_fp8_gemm", "edge case: an all-zero tile (its floored scale)", 0.25,
         _gemm_exact(4, 256, 128, zero_tile=True)),
    Item("test_mtp_combine", "float32, nn.RMSNorm norms and an nn.Linear projection", 0.75, _combine(2, 7, 16, F32)),
    Item("test_mtp_combine", "float64 keeps its dtype", 0.5, _combine(1, 5, 8, F64)),
    Item("test_mtp_combine", "other sizes", 0.25, _combine(3, 4, 6, F32)),
    Item("test_mtp_combine", "edge case: one token", 0.25, _combine(1, 1, 4, F64)),
    Item("test_mtp_combine", "edge case: embeddings far larger than h", 0.25, _combine(2, 3, 8, F32, 300.0)),
    Item("test_mtp_loss", "the loss, D = 1 to 3", 1.0, _mtp(MTP_MAIN, grad=False)),
    Item("test_mtp_loss", "its gradient to every module's logits", 0.75, _mtp(MTP_MAIN, value=False)),
    Item("test_mtp_loss", "float64 logits: a float32 loss", 0.5, _mtp([(1, 12, 3, 5, 1.0, F64)])),
    Item("test_mtp_loss", "edge case: a deepest module without a target (T = D + 1)", 0.5,
         _mtp([(2, 4, 3, 6, 0.3, F32)])),
    Item("test_mtp_loss", "edge case: a single scored position", 0.25, _mtp([(1, 3, 1, 4, 0.5, F32)])),
    Item("test_kd_loss", "forward KL, padded rows", 0.75, _kd([c[:4] + ("forward",) + c[4:] for c in KD_MAIN])),
    Item("test_kd_loss", "reverse KL, padded rows", 0.75, _kd([c[:4] + ("reverse",) + c[4:] for c in KD_MAIN])),
    Item("test_kd_loss", "the gradient reaches the student only", 0.5,
         _kd([(3, 5, 17, 2.0, "forward", F32, F32), (2, 4, 10, 1.5, "reverse", F64, F64)], grad=True)),
    Item("test_kd_loss", "edge case: a teacher in another dtype", 0.25,
         _kd([(2, 4, 10, 1.5, "forward", F32, F64), (1, 8, 13, 3.0, "reverse", F64, F32)])),
    Item("test_kd_loss", "edge case: answer-only masks", 0.25, _kd_answer_only),
    Item("test_kd_loss", "edge case: a mask that selects nothing", 0.25, _kd_empty),
    Item("test_kd_loss", "edge case: logits too large for softmax-then-log", 0.25, _kd_large),
]
