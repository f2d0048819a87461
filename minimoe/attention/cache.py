"""The per-layer inference cache shared by every attention module.

A ``LayerCache`` holds a few named tensors laid out ``(B, S, ...)`` and grows along time (dim 1). What it holds
depends on the attention: full keys and values for MHA/GQA/MQA and naive MLA, only ``(c_kv, k_rope)`` for absorbed
MLA. Counting its elements is how the book measures cache size.
"""

from __future__ import annotations

import torch


class LayerCache:
    """Tensors of one layer's cache, appended along time.

    Shapes: every tensor is (B, S, ...), S the number of cached positions.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[1] if self.tensors else 0

    def append(self, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append the new positions of each named tensor and return the full tensors."""
        if self.tensors and set(new) != set(self.tensors):
            raise ValueError(f"cache holds {sorted(self.tensors)}, got {sorted(new)}: was the attention mode "
                             "changed while a cache was in use?")
        for name, value in new.items():
            old = self.tensors.get(name)
            self.tensors[name] = value if old is None else torch.cat([old, value], dim=1)
        return dict(self.tensors)

    def elements_per_token(self) -> int:
        """Cached elements for one position of one sequence (all named tensors together)."""
        return sum(t[0, 0].numel() for t in self.tensors.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows in ``index`` (beam search, dropping finished rows)."""
        self.tensors = {k: v.index_select(0, index) for k, v in self.tensors.items()}
