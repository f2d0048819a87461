"""Distillation: teaching a small model with a large one's outputs.

Two ways to pass what a teacher knows to a smaller student:

* **Sequence-level distillation, R1's recipe** (DeepSeek-R1 §2.4): sample many answers from the teacher, keep only
  the correct, well-formatted ones (rejection sampling) and fine-tune the student on them with the ordinary
  next-token cross-entropy. SFT only, no RL. The student sees one token per position: the one the teacher sampled.
* **Logit distillation** (Hinton et al. 2015, §2): at every position of a sequence, match the student's whole
  next-token distribution to the teacher's, softened by a temperature τ. ``kd_loss`` below.

The comparison of both with RL on the student itself is chapter 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DIRECTIONS", "kd_loss"]

DIRECTIONS = ("forward", "reverse")
"""``forward`` = KL(teacher ‖ student) (mass-covering); ``reverse`` = KL(student ‖ teacher) (mode-seeking)."""


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
            temperature: float = 1.0, direction: str = "forward") -> torch.Tensor:
    """Knowledge-distillation loss: τ² · mean over masked tokens of KL between softened distributions.

    With p_τ = softmax(z^teacher / τ) and q_τ = softmax(z^student / τ) over the vocabulary at one position,

        forward:  KL(p_τ ‖ q_τ) = Σ_v p_τ(v) (log p_τ(v) − log q_τ(v))
        reverse:  KL(q_τ ‖ p_τ) = Σ_v q_τ(v) (log q_τ(v) − log p_τ(v))

    summed over the vocabulary, averaged over the positions where ``mask`` is True, and multiplied by τ², which
    keeps the gradients' size roughly independent of τ (Hinton et al. 2015, §2: the soft-target gradients scale as
    1/τ²). The teacher's logits are detached: only the student learns.

    Shapes:
        student_logits: (B, T, V) floating point.
        teacher_logits: (B, T, V), the same shape; any floating dtype (cast to the student's).
        mask: (B, T) bool, True where a token counts (e.g. the answer, not the prompt or the padding).
        returns: () scalar, in the student's dtype; 0 (with a gradient) if the mask selects nothing.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction ({direction!r}) must be one of {DIRECTIONS}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature ({temperature!r}) must be a positive number")
    if not student_logits.is_floating_point():
        raise TypeError(f"student_logits must be floating point, got {student_logits.dtype}")
    if not teacher_logits.is_floating_point():
        raise TypeError(f"teacher_logits must be floating point, got {teacher_logits.dtype}")
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be (B, T, V), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits shape {tuple(teacher_logits.shape)} must equal student_logits shape "
                         f"{tuple(student_logits.shape)} (B, T, V)")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if mask.shape != student_logits.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}")

    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, T, V) student
    log_p = F.log_softmax(teacher_logits.detach().to(student_logits.dtype) / temperature, dim=-1)  # (B, T, V)
    if direction == "forward":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B, T) KL(p ‖ q)
    else:
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (B, T) KL(q ‖ p)
    n_tokens = mask.sum().clamp(min=1)
    return (kl * mask).sum() / n_tokens * temperature**2
