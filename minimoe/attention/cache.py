"""The per-layer inference cache shared by every attention module.

A ``LayerCache`` holds a few named tensors laid out ``(B, S, ...)`` and grows along time (dim 1). What it holds
depends on the attention: full keys and values for MHA/GQA/MQA and naive MLA, only ``(c_kv, k_rope)`` for absorbed
MLA. Counting its elements is how the book measures cache size.

Storage grows by doubling, so appending one token costs a copy of that token, not of the whole cache (a plain
``torch.cat`` per step would copy all S positions at every decode step and hide the cost of attention itself).
"""

from __future__ import annotations

import torch


class LayerCache:
    """Tensors of one layer's cache, appended along time.

    Shapes: every tensor is (B, S, ...), S the number of cached positions.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}  # (B, capacity, ...)
        self._length = 0

    def __len__(self) -> int:
        return self._length

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The cached tensors, (B, S, ...) views of the storage."""
        return {name: buf[:, : self._length] for name, buf in self._buffers.items()}

    @property
    def batch_size(self) -> int | None:
        return next(iter(self._buffers.values())).shape[0] if self._buffers else None

    def append(self, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Append the new positions of each named tensor and return the full tensors."""
        if self._buffers and set(new) != set(self._buffers):
            raise ValueError(f"cache holds {sorted(self._buffers)}, got {sorted(new)}: was the attention mode "
                             "changed while a cache was in use?")
        lengths = {value.shape[1] for value in new.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors appended together must add the same number of positions, got {lengths}")
        n_new = lengths.pop()
        needed = self._length + n_new
        for name, value in new.items():
            buf = self._buffers.get(name)
            if buf is None or buf.shape[1] < needed:
                capacity = max(needed, 2 * (buf.shape[1] if buf is not None else 0), 16)
                grown = value.new_empty((value.shape[0], capacity, *value.shape[2:]))
                if buf is not None:
                    grown[:, : self._length] = buf[:, : self._length]
                self._buffers[name] = buf = grown
            buf[:, self._length : needed] = value
        self._length = needed
        return self.tensors

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding drops the rejected drafts)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"length ({length}) must lie in [0, {self._length}]")
        self._length = length

    def elements_per_token(self) -> int:
        """Cached elements for one position of one sequence (all named tensors together)."""
        return sum(buf[0, 0].numel() for buf in self._buffers.values())

    def nbytes(self) -> int:
        """Bytes of the cached positions (not of the spare capacity)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())
