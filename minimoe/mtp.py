"""Multi-token prediction (DeepSeek-V3 §2.2, Eqs. (21)–(25)): the maths as pure functions.

V3 keeps the causal chain: the k-th MTP module predicts token ``t_{i+k+1}`` from the previous depth's
representation of position ``i`` and the embedding of the token ``t_{i+k}`` that is k steps ahead:

    h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))]            Eq. (21)
    h_{1:T-k}^k = TRM_k(h'_{1:T-k}^k)                                   Eq. (22)
    P_{i+k+1}^k = OutHead(h_i^k)                                        Eq. (23)
    CE_k = mean over i of -log P_{i+k+1}^k[t_{i+k+1}]                   Eq. (24)
    L_MTP = (λ / D) Σ_{k=1..D} CE_k                                     Eq. (25)

``h^0`` is the main model's last hidden state (before the final norm); the embedding and the output head are the
main model's own. Indexing here is 0-based: the logits of module k hold T − k positions, position i predicting
``tokens[:, i + k + 1]``; the last one has no target inside the sequence (at inference it is the draft).

Eq. (24) in the paper divides by T; we average over the positions that have a target (T − k − 1 of them, fewer
with ignored targets), as the main loss does, so CE_k is on the same scale as the next-token loss.
The paper writes the concatenation as [h; Emb]; DeepSeek's released checkpoint stores ``eh_proj`` for the order
[Emb; h], which only permutes the columns of M_k.

The module that holds the weights is ``minimoe.model.MTPModule``; ``Transformer.forward`` returns the logits in
``ModelOutput.mtp_logits`` and ``λ · L_MTP`` in ``ModelOutput.mtp_loss``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "mtp_combine", "mtp_cross_entropies", "mtp_loss", "mtp_targets"]

IGNORE_INDEX = -100  # as torch.nn.functional.cross_entropy and minimoe.tasks.sequences

Fn = Callable[[torch.Tensor], torch.Tensor]


def mtp_combine(h_prev: torch.Tensor, emb_next: torch.Tensor, norm_h: Fn, norm_e: Fn, proj: Fn) -> torch.Tensor:
    """The input of MTP module k, Eq. (21): h'_i^k = M_k [RMSNorm(h_i^{k-1}); RMSNorm(Emb(t_{i+k}))].

    ``h_prev`` is the previous depth's representation at positions i (the main model's for k = 1), ``emb_next``
    the embedding of the token k steps ahead of each position, ``norm_h`` / ``norm_e`` the two RMSNorms and
    ``proj`` the projection M_k (d × 2d, e.g. an ``nn.Linear(2 * d, d, bias=False)``).

    Shapes: h_prev (B, T, d), emb_next (B, T, d) -> (B, T, d).
    """
    assert h_prev.shape == emb_next.shape, (h_prev.shape, emb_next.shape)
    return proj(torch.cat([norm_h(h_prev), norm_e(emb_next)], dim=-1))  # Eq. (21): M_k [·; ·], (B, T, 2d) -> (B, T, d)


def mtp_targets(tokens: torch.Tensor, depth: int, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The targets of MTP module ``depth`` (k ≥ 1): position i predicts ``tokens[:, i + k + 1]``.

    Without ``targets`` they come from ``tokens`` (T − k − 1 of them). With the next-token ``targets`` of a training
    batch (``targets[:, j]`` = the token after ``tokens[:, j]``, ``IGNORE_INDEX`` where ignored) they are
    ``targets[:, k:]`` (T − k of them, the last one the token just past the input).

    Shapes: tokens (B, T), targets (B, T) or None -> (B, T − k − 1) or (B, T − k) long.
    """
    assert depth >= 1 and (targets is None or targets.shape == tokens.shape), (depth, tokens.shape)
    return tokens[:, depth + 1:] if targets is None else targets[:, depth:]


def mtp_cross_entropies(mtp_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], tokens: torch.Tensor,
                        targets: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """CE_k of Eq. (24) for k = 1 … D: the mean cross-entropy of module k over the positions that have a target.

    ``mtp_logits[k - 1]`` is module k's output over positions 0 … T − k − 1 (as ``ModelOutput.mtp_logits``);
    ``targets`` as in ``mtp_targets``. A module without any target (T too short, or all ignored) gives 0.

    Shapes: mtp_logits D × (B, T − k, V), tokens (B, T), targets (B, T) or None -> (D,) float32.
    """
    B, T = tokens.shape
    shapes = [tuple(logits.shape[:2]) for logits in mtp_logits]
    if not shapes or shapes != [(B, T - k) for k in range(1, len(shapes) + 1)]:
        raise ValueError(f"mtp_logits must be D >= 1 tensors (B, T - k, V) for k = 1 … D with (B, T) = {(B, T)}, "
                         f"got {shapes}")
    if targets is not None and targets.shape != tokens.shape:
        raise ValueError(f"targets must have the shape of tokens {tuple(tokens.shape)}, got {tuple(targets.shape)}")
    losses = []
    for k, logits in enumerate(mtp_logits, start=1):
        target = mtp_targets(tokens, k, targets)  # (B, T - k - 1) or (B, T - k)
        n = target.shape[1]
        logits = logits[:, :n].float()  # (B, n, V)
        valid = target != ignore_index
        if n == 0 or not bool(valid.any()):
            losses.append(logits.sum() * 0.0)  # keeps the graph and the device
            continue
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=ignore_index))
    return torch.stack(losses)  # (D,)


def mtp_loss(mtp_logits: list[torch.Tensor] | tuple[torch.Tensor, ...], tokens: torch.Tensor, weight: float,
             targets: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """L_MTP = (λ / D) Σ_k CE_k, Eq. (25), with λ = ``weight`` (V3: 0.3 for the first 10T tokens, then 0.1).

    Shapes: mtp_logits D × (B, T − k, V), tokens (B, T), targets (B, T) or None -> () float32.
    """
    ce = mtp_cross_entropies(mtp_logits, tokens, targets, ignore_index)  # (D,)
    return weight * ce.mean()
