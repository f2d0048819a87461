"""Rotary position embedding (RoPE) in DeepSeek's two layouts, with YaRN context extension.

RoPE (Su et al. 2021, "RoFormer", Eq. (34)) rotates each pair of dimensions ``(x_a, x_b)`` of a query or key by the
angle ``m·θ_i`` of its position m, so that ``q_mᵀ k_n`` depends only on ``m − n``:

    [y_a; y_b] = [[cos mθ_i, −sin mθ_i], [sin mθ_i, cos mθ_i]] · [x_a; x_b],   θ_i = base^(−2i/d),  i < d/2.

Which dims form pair i is a layout choice:

* **interleaved** (DeepSeek, ``inference/model.py`` ``apply_rotary_emb``): pair i is ``(x_{2i}, x_{2i+1})``, read as
  the complex number ``x_{2i} + j·x_{2i+1}`` and multiplied by ``e^{j·mθ_i}``.
* **rotate-half** (GPT-NeoX / Hugging Face ``rotate_half``): pair i is ``(x_i, x_{i+d/2})``.

The two are the same rotation up to the fixed permutation ``[0, 2, 4, …, 1, 3, 5, …]`` of the dims. Hugging Face's
``apply_rotary_pos_emb_interleave`` (``rope_interleave=True``) reads interleaved pairs but writes its output in that
de-interleaved order; since q and k are permuted alike, every score ``qᵀk`` is unchanged, so our interleaved output
(kept in DeepSeek's order) gives the same attention as HF's.

YaRN (Peng et al. 2023, §3.2–3.3; DeepSeek-V2 §3.1.4, DeepSeek-V3 §4.3) extends a model trained on
``original_max_position_embeddings`` tokens by ``factor``: high-frequency dims keep θ_i (extrapolation),
low-frequency dims use θ_i / factor (interpolation), with a linear ramp between, and the attention logits are
rescaled. The formulas follow Hugging Face ``modeling_rope_utils._compute_yarn_parameters`` and
``DeepseekV3Attention`` exactly, so weights imported from a hub checkpoint give the same logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """YaRN's attention temperature ``0.1·mscale·ln(scale) + 1`` (1 when not extending; YaRN Eq. (22)).

    DeepSeek-V3 (mscale 1, factor 40; DeepSeek-V3 §4.3 and its released config) gives 1.3689.
    """
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_find_correction_dim(n_rotations: float, dim: int, base: float, original_max_position: int) -> float:
    """The (fractional) dim index whose wavelength fits ``n_rotations`` times into the original context.

    Solves ``original_max_position / (2π·base^(2i/dim)) = n_rotations`` for i (YaRN §3.2, "NTK-by-parts").
    """
    return dim * math.log(original_max_position / (n_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_find_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float,
                               original_max_position: int, truncate: bool = True) -> tuple[float, float]:
    """Dims below ``low`` rotate > beta_fast times (extrapolate); above ``high`` < beta_slow times (interpolate)."""
    low = yarn_find_correction_dim(beta_fast, dim, base, original_max_position)
    high = yarn_find_correction_dim(beta_slow, dim, base, original_max_position)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_linear_ramp_mask(low: float, high: float, n: int) -> torch.Tensor:
    """``clamp((i − low) / (high − low), 0, 1)`` for i < n: 0 = extrapolate, 1 = interpolate.

    Shapes:
        returns (n,) float32.
    """
    if low == high:
        high += 0.001  # avoid dividing by zero, as HF and DeepSeek do
    return torch.clamp((torch.arange(n, dtype=torch.float32) - low) / (high - low), 0, 1)


def _yarn_params(rope_scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """The YaRN settings of a config's ``rope_scaling`` (HF form), or None when RoPE is unscaled."""
    if rope_scaling is None or rope_scaling.get("type", rope_scaling.get("rope_type")) in (None, "default"):
        return None
    return rope_scaling


def rope_inv_freq(dim: int, base: float, rope_scaling: dict[str, Any] | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies θ_i and the factor that multiplies cos/sin (HF ``attention_factor``).

    Without scaling: ``θ_i = base^(−2i/dim)`` and factor 1. With YaRN (HF ``_compute_yarn_parameters``):
    ``θ_i = θ_i/s · ramp_i + θ_i · (1 − ramp_i)``, s = factor, and the cos/sin factor is
    ``mscale(s, mscale) / mscale(s, mscale_all_dim)`` when both are given (1 for every DeepSeek config, where they are
    equal), else ``mscale(s)``; an explicit ``attention_factor`` wins.

    Shapes:
        returns inv_freq (dim/2,) float32 and a float.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim ({dim}) must be a positive even integer")
    wavelength = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,) 1/θ_i
    yarn = _yarn_params(rope_scaling)
    if yarn is None:
        return 1.0 / wavelength, 1.0
    factor = yarn["factor"]
    mscale, mscale_all_dim = yarn.get("mscale"), yarn.get("mscale_all_dim")
    attention_factor = yarn.get("attention_factor")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    low, high = yarn_find_correction_range(yarn.get("beta_fast") or 32, yarn.get("beta_slow") or 1, dim, base,
                                           yarn["original_max_position_embeddings"], yarn.get("truncate", True))
    extrapolate = 1 - yarn_linear_ramp_mask(low, high, dim // 2)  # (dim/2,) 1 = keep θ_i
    inv_freq = 1.0 / (factor * wavelength) * (1 - extrapolate) + 1.0 / wavelength * extrapolate  # (dim/2,)
    return inv_freq, float(attention_factor)


def softmax_scale(cfg, head_dim: int | None = None) -> float:
    """The factor on ``qᵀk``: ``head_dim^−½`` (default ``qk_head_dim``, DeepSeek-V2 §2.1.2, Eq. (18)), times
    ``mscale²`` with ``mscale = yarn_get_mscale(factor, mscale_all_dim)`` under YaRN (DeepSeek-V3
    ``inference/model.py`` ``MLA.__init__``; HF ``yarn_apply_mscale``). V3 → 0.13523, V2 → 0.11472 (released configs:
    mscale 1.0 and 0.707).
    """
    scale = (head_dim or cfg.qk_head_dim) ** -0.5
    yarn = _yarn_params(cfg.rope_scaling)
    if yarn is not None and yarn.get("mscale_all_dim"):
        scale *= yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"]) ** 2
    return scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool = True) -> torch.Tensor:
    """Rotate the pairs of ``x`` by the angles whose cos/sin are given (RoFormer Eq. (34)).

    ``interleave=True``: pairs (x0, x1), (x2, x3), … — DeepSeek's complex product
    ``(x_{2i} + j·x_{2i+1})·(cos + j·sin)``, written out in real arithmetic so any float dtype works.
    ``interleave=False``: pairs (x_i, x_{i+d/2}) — HF ``x·cos + rotate_half(x)·sin``.

    Shapes:
        x: (B, T, d_r) or (B, T, H, d_r); cos, sin: (B, T, d_r/2) (one angle per pair); returns x's shape and dtype.
    """
    if x.shape[-1] != 2 * cos.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} rotary dims but cos/sin hold {cos.shape[-1]} angles (need d_r/2)")
    if x.dim() == cos.dim() + 1:  # a head axis: every head turns by the same angle
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (B, T, 1, d_r/2)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if interleave:
        x_a, x_b = x[..., 0::2], x[..., 1::2]  # (…, d_r/2) real and imaginary parts
        return torch.stack((x_a * cos - x_b * sin, x_b * cos + x_a * sin), dim=-1).flatten(-2)  # (…, d_r)
    x_a, x_b = x.chunk(2, dim=-1)  # (…, d_r/2) first and second halves
    return torch.cat((x_a * cos - x_b * sin, x_b * cos + x_a * sin), dim=-1)  # (…, d_r)


class RotaryEmbedding(nn.Module):
    """Holds θ_i for one RoPE width and turns positions into (cos, sin).

    ``inv_freq`` is a non-persistent buffer (no checkpoint entry); cos/sin are computed in float32 from it and
    multiplied by ``attention_factor`` (HF ``attention_scaling``, 1 for DeepSeek's configs).
    """

    def __init__(self, dim: int, max_position_embeddings: int, base: float = 10000.0,
                 rope_scaling: dict[str, Any] | None = None, interleave: bool = True) -> None:
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(dim, base, rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.dim = dim
        self.max_position_embeddings = max_position_embeddings
        self.interleave = interleave

    def cos_sin(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of ``position · θ_i``, times ``attention_factor``. No range check here: ``Transformer.forward``
        checks positions once.

        Shapes:
            position_ids: (B, T) integer; returns cos, sin: (B, T, d_r/2) float32.
        """
        angles = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, d_r/2)
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` at the given positions in this embedding's layout.

        Shapes:
            x: (B, T, d_r) or (B, T, H, d_r); position_ids: (B, T); returns x's shape.
        """
        cos, sin = self.cos_sin(position_ids)
        return apply_rope(x, cos, sin, self.interleave)

    @classmethod
    def of(cls, cfg) -> RotaryEmbedding:
        """The RoPE of a model config's attention: the d_r = ``qk_rope_head_dim`` decoupled dims for MLA
        (DeepSeek-V2 §2.1.3), the whole ``baseline_head_dim`` head for MHA/GQA/MQA; the model builds one and every
        layer reads its table."""
        dim = cfg.qk_rope_head_dim if cfg.attention_type == "mla" else cfg.baseline_head_dim
        return cls(dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, interleave=cfg.rope_interleave)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, interleave={self.interleave}, attention_factor={self.attention_factor:.4f}"
