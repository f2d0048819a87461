"""Synthetic language-model tasks that a tiny model learns in a minute or two on a laptop CPU.

Each task is a small frozen dataclass whose call is a deterministic batch generator for ``minimoe.train``:
``task(step, batch_size, seq_len, generator) -> (inputs, targets)``, both (B, T) long, ``targets`` the next token
with -100 where nothing can be predicted. The same generator state gives the same batch.

- ``MarkovGrammar``: tokens fall into clusters; a token is followed by one of a few fixed successors in its own
  cluster, or now and then jumps to another cluster. The clusters give routers something to specialise on, and
  ``entropy_rate()`` is the best loss any model can reach.
- ``CopyTask``: random symbols, a separator, then the same symbols again (or reversed): needs attention.
- ``ModularProgression``: x_t = x_0 + t·d (mod p); every token after the second is determined by the two before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

IGNORE_INDEX = -100  # targets with this value are skipped by the loss (as in torch.nn.functional.cross_entropy)


def _check_batch_args(batch_size: int, seq_len: int, min_len: int = 1) -> None:
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size ({batch_size!r}) must be a positive integer")
    if not (isinstance(seq_len, int) and seq_len >= min_len):
        raise ValueError(f"seq_len ({seq_len!r}) must be an integer >= {min_len}")


def _shift(seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token pairs from sequences of T + 1 tokens. Shapes: (B, T+1) -> inputs (B, T), targets (B, T)."""
    return seq[:, :-1].contiguous(), seq[:, 1:].clone()


@dataclass(frozen=True)
class MarkovGrammar:
    """A clustered Markov chain over ``n_clusters · cluster_size`` tokens.

    Token i of cluster c moves, with probability 1 − ``switch_prob``, to one of ``branching`` successors drawn
    once (from ``seed``) inside cluster c, each equally likely; with probability ``switch_prob`` it moves to a
    uniformly chosen token of another cluster. Cluster c holds tokens c·cluster_size … (c+1)·cluster_size − 1.

    Shapes: __call__ -> inputs (B, T), targets (B, T) long; ``transition`` (V, V) float64, rows summing to 1.
    """

    n_clusters: int = 4
    cluster_size: int = 16
    branching: int = 2
    switch_prob: float = 0.1
    seed: int = 0
    transition: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.n_clusters, int) and self.n_clusters > 0):
            raise ValueError(f"n_clusters ({self.n_clusters!r}) must be a positive integer")
        if not (isinstance(self.cluster_size, int) and self.cluster_size > 0):
            raise ValueError(f"cluster_size ({self.cluster_size!r}) must be a positive integer")
        if not (isinstance(self.branching, int) and 0 < self.branching <= self.cluster_size):
            raise ValueError(f"branching ({self.branching!r}) must be an integer in [1, cluster_size "
                             f"({self.cluster_size})]")
        if not 0 <= self.switch_prob <= 1:
            raise ValueError(f"switch_prob ({self.switch_prob}) must lie in [0, 1]")
        if self.n_clusters == 1 and self.switch_prob > 0:
            raise ValueError(f"switch_prob ({self.switch_prob}) must be 0 with a single cluster (nowhere to switch)")
        object.__setattr__(self, "transition", self._build_transition())

    @property
    def vocab_size(self) -> int:
        return self.n_clusters * self.cluster_size

    def _build_transition(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        v, c = self.vocab_size, self.cluster_size
        cluster = torch.arange(v) // c  # (V,)
        other = cluster[:, None] != cluster[None, :]  # (V, V): the target lies in another cluster
        p = torch.zeros(v, v, dtype=torch.float64)
        if self.n_clusters > 1:
            p[other] = self.switch_prob / (v - c)
        for i in range(v):
            start = int(cluster[i]) * c
            successors = start + torch.randperm(c, generator=g)[: self.branching]  # (branching,)
            p[i, successors] = (1.0 - self.switch_prob) / self.branching
        return p

    def cluster_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """The cluster of each token. Shapes: (...) -> (...)."""
        return tokens // self.cluster_size

    def entropy_rate(self) -> float:
        """The lowest achievable next-token cross-entropy, in nats.

        Every row of ``transition`` holds the same probabilities in a different order, so each token's next-token
        entropy is the same and equals the chain's entropy rate whatever its stationary distribution.
        """
        p = self.transition
        row_entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(dim=-1)  # (V,)
        return row_entropy.mean().item()

    def __call__(self, step: int, batch_size: int, seq_len: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch_args(batch_size, seq_len)
        seq = torch.empty(batch_size, seq_len + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(self.vocab_size, (batch_size,), generator=generator)
        probs = self.transition.float()
        for t in range(seq_len):
            seq[:, t + 1] = torch.multinomial(probs[seq[:, t]], 1, generator=generator).squeeze(-1)
        return _shift(seq)


@dataclass(frozen=True)
class CopyTask:
    """``[BOS]? x_1 … x_n SEP x_1 … x_n`` (or ``x_n … x_1`` with ``reverse``); only the copy is scored.

    Token 0 is BOS (pads odd lengths at the front), token 1 is SEP, symbols are 2 … ``n_symbols`` + 1. With T
    tokens of input, n = T // 2 symbols are copied.

    Shapes: __call__ -> inputs (B, T), targets (B, T) long.
    """

    n_symbols: int = 16
    reverse: bool = False
    bos: ClassVar[int] = 0
    sep: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.n_symbols, int) and self.n_symbols > 0):
            raise ValueError(f"n_symbols ({self.n_symbols!r}) must be a positive integer")

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + 2

    def __call__(self, step: int, batch_size: int, seq_len: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch_args(batch_size, seq_len, min_len=2)
        n = seq_len // 2
        n_bos = seq_len - 2 * n  # 0 or 1, so that the sequence holds T + 1 tokens
        x = 2 + torch.randint(self.n_symbols, (batch_size, n), generator=generator)  # (B, n)
        copy = x.flip(-1) if self.reverse else x
        parts = [torch.full((batch_size, n_bos), self.bos), x, torch.full((batch_size, 1), self.sep), copy]
        inputs, targets = _shift(torch.cat(parts, dim=1))  # (B, T) each
        targets[:, : n_bos + n] = IGNORE_INDEX  # the symbols before SEP (and SEP itself) are random
        return inputs, targets


@dataclass(frozen=True)
class ModularProgression:
    """Arithmetic progressions mod p: x_t = (x_0 + t·d) mod p, with x_0 and d random per sequence.

    Tokens are the residues 0 … p − 1. The first target (x_1) is unknown from x_0 alone and is not scored; every
    later one follows from the two tokens before it: x_{t+1} = 2·x_t − x_{t−1} (mod p).

    Shapes: __call__ -> inputs (B, T), targets (B, T) long.
    """

    modulus: int = 10

    def __post_init__(self) -> None:
        if not (isinstance(self.modulus, int) and self.modulus >= 2):
            raise ValueError(f"modulus ({self.modulus!r}) must be an integer >= 2")

    @property
    def vocab_size(self) -> int:
        return self.modulus

    def __call__(self, step: int, batch_size: int, seq_len: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _check_batch_args(batch_size, seq_len)
        x0 = torch.randint(self.modulus, (batch_size, 1), generator=generator)  # (B, 1)
        d = torch.randint(self.modulus, (batch_size, 1), generator=generator)  # (B, 1)
        seq = (x0 + d * torch.arange(seq_len + 1)) % self.modulus  # (B, T+1)
        inputs, targets = _shift(seq)
        targets[:, 0] = IGNORE_INDEX
        return inputs, targets
