"""FP8 training, simulated: block-wise E4M3 quantisation, limited-precision accumulation, an FP8 linear layer.

DeepSeek-V3 §3.3 trains in FP8: the three GEMMs of every linear layer (Fprop, Dgrad, Wgrad; Figure 6) take FP8
inputs, while the embedding, output head, MoE gating, normalisations and attention stay in BF16/FP32. What makes
it work is *fine-grained* scaling (DeepSeek-V3 §3.3.2): one scale per 1×128 tile of activations (per token per
128 channels) and per 128×128 block of weights, each the tile's max-abs divided by the format's largest value,
computed online from the current tile, so one outlier spoils only its own tile; and *increased accumulation
precision*: the tensor cores of the H800 keep about 14 bits of the running sum (DeepSeek-V3 §3.5.2 describes how:
32 products aligned to the largest exponent, the top 14 bits of each kept and the rest truncated, the results
accumulated in a 14-bit register), so partial sums are promoted to FP32 every N_C = 128 elements of the inner
dimension (DeepSeek-V3 §3.3.2).

This module reproduces all of it on a CPU with torch's ``float8_e4m3fn`` / ``float8_e5m2`` casts. The matrix
products themselves run in float32 on dequantised values ("fake quantisation"): the rounding is FP8's, the speed
is not. ``quantize`` follows the semantics of DeepSeek-V3's ``inference/kernel.py`` (``act_quant``,
``weight_dequant``), which its docstring spells out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from minimoe.moe.experts import MLP, DeepSeekMoE

__all__ = ["AMAX_FLOOR", "FORMATS", "FP8Format", "FP8Linear", "accumulate", "dequantize", "fake_quantize",
           "fp8_gemm", "fp8_modules", "grid", "quantize", "round_to_bits", "to_fp8"]


@dataclass(frozen=True)
class FP8Format:
    """An 8-bit float: 1 sign bit, ``exponent_bits``, ``mantissa_bits``; ``max`` is the largest finite value."""

    name: str
    dtype: torch.dtype
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max: float


# E4M3 ("fn": finite, no infinities; only S.1111.111 is NaN, so the top binade reaches 1.75 · 2^8 = 448).
# E5M2 keeps IEEE's infinities and NaNs: its largest finite value is 1.75 · 2^15 = 57344.
FORMATS = {
    "e4m3": FP8Format("e4m3", torch.float8_e4m3fn, exponent_bits=4, mantissa_bits=3, bias=7, max=448.0),
    "e5m2": FP8Format("e5m2", torch.float8_e5m2, exponent_bits=5, mantissa_bits=2, bias=15, max=57344.0),
}
AMAX_FLOOR = 1e-4
"""``act_quant`` clamps a tile's max-abs to at least this before dividing by 448 (DeepSeek-V3 ``kernel.py``)."""


def _format(fmt: str) -> FP8Format:
    if fmt not in FORMATS:
        raise ValueError(f"fmt ({fmt!r}) must be one of {tuple(FORMATS)}")
    return FORMATS[fmt]


def grid(fmt: str = "e4m3") -> torch.Tensor:
    """Every finite value the format represents, sorted: the 256 bit patterns cast to float32, NaN/inf dropped.

    Shapes: returns (n,) float32: 253 values for E4M3 (256 patterns less 2 NaNs, ±0 counted once), 247 for E5M2.
    """
    spec = _format(fmt)
    values = torch.arange(256, dtype=torch.uint8).view(spec.dtype).float()  # (256,) every bit pattern
    return torch.unique(values[torch.isfinite(values)])  # -0 and +0 collapse into one 0


def _blocks(x: torch.Tensor, block: tuple[int, int] | None) -> tuple[int, int]:
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., M, N), got shape {tuple(x.shape)}")
    M, N = x.shape[-2:]
    if block is None:  # per-tensor: one block covering the last two dimensions
        return M, N
    b0, b1 = block
    if b0 <= 0 or b1 <= 0 or M % b0 or N % b1:
        raise ValueError(f"x of shape {tuple(x.shape)}: its last two dimensions ({M}, {N}) must be divisible by "
                         f"block ({b0}, {b1})")
    return b0, b1


def quantize(x: torch.Tensor, fmt: str = "e4m3",
             block: tuple[int, int] | None = (1, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise FP8 quantisation: ``x ≈ q · scale`` with one float32 scale per (b0 × b1) block.

    DeepSeek-V3 §3.3.2: activations use ``block=(1, 128)`` (per token per 128 channels), weights
    ``block=(128, 128)``; ``block=None`` is per-tensor scaling (one scale for the last two dimensions). For each
    block, as DeepSeek-V3's ``inference/kernel.py`` ``act_quant`` computes it:

        amax  = max(|x|) over the block, in float32, clamped to at least 1e-4 (``AMAX_FLOOR``)
        scale = amax / 448                  (the format's largest value: 57344 for E5M2)
        q     = cast(x / scale)             to float8, round-to-nearest-even

    The clamp is what makes an all-zero block safe: its scale is 1e-4 / 448 and its q is zero, where the kernel's
    first release divided 0 by 0 and wrote NaN (the clamp was added in August 2025). The largest element of a
    block maps to ±448 exactly; ``x / scale`` is clamped to ±max before the cast so that a rounding of the division
    cannot step past it. The scale is a plain float32 (``scale_fmt=None``), not the power-of-two ``"ue8m0"`` option.

    Shapes: x (..., M, N) -> q (..., M, N) float8, scale (..., M // b0, N // b1) float32.
    """
    spec = _format(fmt)
    b0, b1 = _blocks(x, block)
    *lead, M, N = x.shape
    tiles = x.float().reshape(*lead, M // b0, b0, N // b1, b1)  # (..., M/b0, b0, N/b1, b1)
    amax = tiles.abs().amax(dim=(-3, -1), keepdim=True).clamp(min=AMAX_FLOOR)  # (..., M/b0, 1, N/b1, 1)
    scale = amax / spec.max
    q = (tiles / scale).clamp(-spec.max, spec.max).to(spec.dtype).reshape(x.shape)  # (..., M, N)
    return q, scale.reshape(*lead, M // b0, N // b1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None = (1, 128)) -> torch.Tensor:
    """``q · scale`` in float32, each scale broadcast over its block: DeepSeek-V3's ``weight_dequant``
    (``y = x.float() * s`` per 128×128 block) for any block shape; ``block=None`` for a per-tensor scale.

    Shapes: q (..., M, N) float8, scale (..., M // b0, N // b1) -> (..., M, N) float32.
    """
    b0, b1 = _blocks(q, block)
    *lead, M, N = q.shape
    if tuple(scale.shape) != (*lead, M // b0, N // b1):
        raise ValueError(f"scale has shape {tuple(scale.shape)}, expected {(*lead, M // b0, N // b1)} for q of shape "
                         f"{tuple(q.shape)} and block ({b0}, {b1})")
    tiles = q.float().reshape(*lead, M // b0, b0, N // b1, b1)
    return (tiles * scale.reshape(*lead, M // b0, 1, N // b1, 1)).reshape(q.shape)


def fake_quantize(x: torch.Tensor, fmt: str = "e4m3", block: tuple[int, int] | None = (1, 128)) -> torch.Tensor:
    """``dequantize(*quantize(x, fmt, block), block)``: x with FP8's rounding, in float32.

    Shapes: x (..., M, N) -> (..., M, N) float32.
    """
    return dequantize(*quantize(x, fmt, block), block)


# ---------------------------------------------------------------- the GEMM: accumulation precision (DeepSeek-V3 §3.3.2)
def round_to_bits(x: torch.Tensor, bits: int, rounding: str = "nearest") -> torch.Tensor:
    """Round to ``bits`` significant bits (the leading one included): ``"nearest"`` (ties to even) or
    ``"truncate"`` (toward zero: the low bits are dropped, as when an adder shifts them out).

    Shapes: x (...) float -> (...) same dtype.
    """
    if rounding not in ("nearest", "truncate"):
        raise ValueError(f"rounding ({rounding!r}) must be 'nearest' or 'truncate'")
    mantissa, exponent = torch.frexp(x)  # x = mantissa · 2^exponent, |mantissa| in [0.5, 1)
    scaled = torch.ldexp(mantissa, torch.tensor(bits))  # |scaled| in [2^(bits-1), 2^bits)
    kept = torch.round(scaled) if rounding == "nearest" else torch.trunc(scaled)
    return torch.ldexp(kept, exponent - bits).to(x.dtype)


def accumulate(products: torch.Tensor, bits: int | None = 14, promote_every: int | None = 128,
               rounding: str = "truncate") -> torch.Tensor:
    """Σ_k products[..., k] as a tensor core with a ``bits``-bit accumulator would add them, one at a time.

    DeepSeek-V3 §3.3.2: the H800's FP8 GEMM "retains around 14 bits". DeepSeek-V3 §3.5.2 publishes how the other
    bits go: the tensor core aligns 32 mantissa products by right-shifting them to the largest exponent, keeps the
    highest 14 bits of each and *truncates* the rest, and accumulates the results in registers of 14-bit precision.
    This function models that loss more simply: the running sum is cut to ``bits`` significant bits after every
    addition, by truncation toward zero (``rounding="truncate"``, the default, the hardware's rule) or, as the
    counterfactual of a hardware that rounds, to nearest (``rounding="nearest"``). Cutting after every product
    rather than once per group of 32 probably loses more than the hardware does: read the truncated figure as an
    upper estimate, not a reproduction (the simplification is ours, not the paper's). With ``promote_every = N_C``, the
    limited sum restarts every N_C elements and each finished partial sum is added to a float32 accumulator (the
    promotion to CUDA cores); ``None`` keeps the whole sum in the limited accumulator. ``bits=None`` is plain
    float32 accumulation.

    Shapes: products (..., K) -> (...) float32.
    """
    products = products.float()
    K = products.shape[-1]
    if bits is None:
        return products.sum(-1)
    chunk = K if promote_every is None else promote_every
    if K % chunk:
        raise ValueError(f"K ({K}) must be divisible by promote_every ({chunk})")
    parts = products.reshape(*products.shape[:-1], K // chunk, chunk)  # (..., K/N_C, N_C)
    partial = torch.zeros(parts.shape[:-1])  # (..., K/N_C): one limited accumulator per chunk
    for k in range(chunk):
        partial = round_to_bits(partial + parts[..., k], bits, rounding)
    return partial.sum(-1)  # promotion: the partial sums added in float32


def fp8_gemm(x: torch.Tensor, w: torch.Tensor, *, bits: int | None = 14, promote_every: int | None = 128,
             rounding: str = "truncate", fmt: str = "e4m3", block: int = 128) -> torch.Tensor:
    """``x @ w.T`` as DeepSeek-V3's FP8 GEMM computes it: x quantised per 1×block tile, w per block×block, the
    products of the dequantised values accumulated by ``accumulate(bits, promote_every, rounding)``.

    Slow on purpose (a Python loop over K): for measuring the error of small products, not for training.

    Shapes: x (M, K), w (N, K) -> (M, N) float32.
    """
    xq = fake_quantize(x, fmt, (1, block))  # (M, K)
    wq = fake_quantize(w, fmt, (block, block))  # (N, K)
    return accumulate(xq[:, None, :] * wq[None, :, :], bits, promote_every, rounding)  # (M, N, K) -> (M, N)


# ---------------------------------------------------------------- the linear layer: Fprop, Dgrad, Wgrad
def _q(t: torch.Tensor, fmt: str, block: tuple[int, int] | None) -> torch.Tensor:
    return fake_quantize(t, fmt, block)


class _FP8LinearFunction(torch.autograd.Function):
    """y = x Wᵀ with every GEMM on FP8-rounded operands (DeepSeek-V3 Figure 6).

    Fprop: x in 1×b tiles, W in b×b blocks. Dgrad (dL/dx = dL/dy · W): dL/dy in 1×b tiles along the output
    features, the same quantised W (a b×b block is a block of Wᵀ too). Wgrad (dL/dW = dL/dyᵀ · x): the FP8 copy of x
    kept from the forward (V3 §3.3.3 caches activations in FP8) and the quantised dL/dy. A real kernel needs the
    scales along the reduction dimension and so re-quantises x and dL/dy in 128×1 tiles for Wgrad (V3 §3.5.2);
    here the product runs on dequantised values, so the tiles only decide the rounding, and the 1×b ones are reused.
    """

    @staticmethod
    def forward(ctx, x, weight, fmt, act_block, weight_block, grad_fmt):
        x_q = _q(x, fmt, act_block)  # (N, in)
        w_q = _q(weight, fmt, weight_block)  # (out, in)
        ctx.save_for_backward(x_q, w_q)  # a real kernel stores the FP8 bytes and scales: 1 byte per element
        ctx.grad_spec = (grad_fmt, act_block)
        return x_q @ w_q.T  # (N, out), accumulated in float32

    @staticmethod
    def backward(ctx, grad_out):
        x_q, w_q = ctx.saved_tensors
        grad_fmt, act_block = ctx.grad_spec
        g_q = _q(grad_out, grad_fmt, act_block)  # (N, out)
        grad_x = g_q @ w_q if ctx.needs_input_grad[0] else None  # Dgrad (N, in)
        grad_w = g_q.T @ x_q if ctx.needs_input_grad[1] else None  # Wgrad (out, in)
        return grad_x, grad_w, None, None, None, None


class FP8Linear(nn.Linear):
    """An ``nn.Linear`` whose Fprop, Dgrad and Wgrad see FP8-quantised operands (simulated, float32 products).

    ``scaling="block"``: activations and gradients per 1×``block`` tile, weights per ``block``×``block`` (V3's
    fine-grained scaling with block = 128; V3 re-quantises Wgrad's operands in 128×1 tiles, which here changes
    only the rounding, see ``_FP8LinearFunction``); ``scaling="tensor"``: one scale per tensor (the per-tensor
    recipe V3 §3.3.2 argues against). ``fmt`` for activations and weights, ``grad_fmt`` for dL/dy; V3 uses E4M3
    for these GEMMs (DeepSeek-V3 §3.3.2), with the exceptions of DeepSeek-V3 §3.3.3: the inputs of the linear
    layer after attention are kept in a custom E5M6 format with power-of-2 scales, the activations dispatched to
    the MoE experts are quantised with power-of-2 scales, and the combine stays in BF16.
    The bias, if any, is added in float32. ``FP8Linear.from_linear`` shares the original's parameters.

    Shapes: x (..., in_features) -> (..., out_features) float32.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, fmt: str = "e4m3",
                 grad_fmt: str = "e4m3", block: int = 128, scaling: str = "block") -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.configure(fmt=fmt, grad_fmt=grad_fmt, block=block, scaling=scaling)

    def configure(self, *, fmt: str, grad_fmt: str, block: int, scaling: str) -> None:
        _format(fmt), _format(grad_fmt)
        if scaling not in ("block", "tensor"):
            raise ValueError(f"scaling ({scaling!r}) must be 'block' or 'tensor'")
        if scaling == "block" and (self.in_features % block or self.out_features % block):
            raise ValueError(f"in_features ({self.in_features}) and out_features ({self.out_features}) must be "
                             f"divisible by block ({block}) for block scaling")
        self.fmt, self.grad_fmt, self.block, self.scaling = fmt, grad_fmt, block, scaling

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> FP8Linear:
        """An FP8Linear holding ``linear``'s own weight and bias Parameters (no copy: an optimizer keeps them)."""
        fp8 = cls.__new__(cls)
        nn.Module.__init__(fp8)
        fp8.in_features, fp8.out_features = linear.in_features, linear.out_features
        fp8.weight, fp8.bias = linear.weight, linear.bias
        fp8.configure(**{"fmt": "e4m3", "grad_fmt": "e4m3", "block": 128, "scaling": "block", **kwargs})
        return fp8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scaling == "block":
            act_block, weight_block = (1, self.block), (self.block, self.block)
        else:
            act_block = weight_block = None
        y = _FP8LinearFunction.apply(x.reshape(-1, self.in_features).float(), self.weight, self.fmt, act_block,
                                     weight_block, self.grad_fmt)  # (N, out)
        y = y.reshape(*x.shape[:-1], self.out_features)  # (..., out)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", fmt={self.fmt}, grad_fmt={self.grad_fmt}, scaling={self.scaling}" + (
            f", block={self.block}" if self.scaling == "block" else "")


def to_fp8(model: nn.Module, *, fmt: str = "e4m3", grad_fmt: str = "e4m3", block: int = 128,
           scaling: str = "block") -> nn.Module:
    """Swap the three projections (w1, w2, w3) of every SwiGLU FFN (dense layers, shared and routed experts) for
    ``FP8Linear`` sharing their parameters, in place; return the model.

    Everything else keeps its precision, as in DeepSeek-V3 §3.3.1: the embedding, the output head, the MoE
    router (gating), the RMSNorms and all of attention. MoE layers are set to ``experts_impl="loop"`` so that the
    routed experts run through their modules (``grouped_mm`` would read the weights directly).
    """
    for module in list(model.modules()):
        if isinstance(module, DeepSeekMoE):
            module.experts_impl = "loop"
        if isinstance(module, MLP):
            for name in ("w1", "w2", "w3"):
                linear = getattr(module, name)
                if not isinstance(linear, FP8Linear):
                    setattr(module, name, FP8Linear.from_linear(linear, fmt=fmt, grad_fmt=grad_fmt, block=block,
                                                                scaling=scaling))
    return model


def fp8_modules(model: nn.Module) -> dict[str, bool]:
    """For every ``nn.Linear``, ``nn.Embedding`` and router of ``model``: its name -> whether it computes in FP8.

    Shapes: returns {module name: bool}.
    """
    from minimoe.moe.gate import Router

    kinds = (nn.Linear, nn.Embedding, Router)
    return {name: isinstance(m, FP8Linear) for name, m in model.named_modules() if isinstance(m, kinds)}
