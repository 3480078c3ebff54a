"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T).

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones when T
    changes. With no teacher logits this is plain cross-entropy.
    """
    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits.to(student_logits.dtype) / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    return (1 - alpha) * hard + alpha * soft
