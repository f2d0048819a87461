"""RMSNorm, the only normalisation DeepSeek uses (blocks, and the MLA latents ``c_q`` and ``c_kv``).

``RMSNorm(x) = x / sqrt(mean(x²) + eps) · weight`` (Zhang & Sennrich 2019), computed in (at least) float32 and
cast back, exactly as Hugging Face ``DeepseekV3RMSNorm`` does, so imported weights give identical outputs.
"""

from __future__ import annotations

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension.

    Shapes:
        x: (..., d); weight: (d,); returns (..., d) in x's dtype.
    """
    x_wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 for half types; float64 stays float64
    x_wide = x_wide * torch.rsqrt(x_wide.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x_wide.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned gain ``weight`` (initialised to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim ({dim}) must be a positive integer")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
