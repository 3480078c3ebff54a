"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the examples that have a label. Unlabeled transfer examples carry label -1:
    only the KD term learns from them. A batch with no labelled example gives 0 (not the NaN of a mean
    over nothing), still attached to the graph."""
    known = labels >= 0
    if bool(known.all()):
        return F.cross_entropy(logits, labels)
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known], labels[known])


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): (1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T).

    The T^2 factor keeps the soft-target gradients on the scale of the hard-label ones when T
    changes. With no teacher logits this is plain cross-entropy. Examples labelled -1 (unlabeled
    transfer data) count in the KD term only.
    """
    hard = labelled_cross_entropy(student_logits, labels)
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
