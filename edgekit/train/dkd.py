"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation").

Classic KD's KL term splits into two parts at temperature T:

- TCKD (target class): KL between the binary distributions [p_t, 1 - p_t] of teacher and student,
  where p_t is the probability of the target class: how sure each is of the right answer;
- NCKD (non-target classes): KL between the distributions over the other classes alone (the target
  masked out and the rest renormalised): the teacher's "dark knowledge".

Classic KD is TCKD + (1 - p_t^teacher) * NCKD, so the more confident the teacher, the less of its dark
knowledge reaches the student. DKD weights the two parts freely:

    loss = (1 - alpha) * CE(labels) + alpha * T^2 * (target_weight * TCKD + nontarget_weight * NCKD)

``alpha`` and T are edgekit's (``distill.alpha``, ``distill.temperature``); ``target_weight`` and
``nontarget_weight`` (the paper's alpha and beta; defaults 1 and 8, its values, in the loss's registry
entry) come from ``distill.loss_options``. With a binary task NCKD is zero (one non-target class), so DKD is TCKD
alone. An example without a label (unlabeled transfer data, label -1) takes the teacher's top class
as its target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekit.train.losses import labelled_cross_entropy

_MASK = 1000.0  # subtracted from the target's logit: its probability underflows to 0 in the softmax


def _binary_kl(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TCKD: KL([p_t, 1 - p_t]_teacher || [p_t, 1 - p_t]_student), summed over the batch.

    Computed from log-probabilities (logsumexp over the non-target classes), so a confident teacher
    or student (p_t near 1) gives no log(0)."""

    def log_pair(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=-1)
        log_target = log_p.gather(1, target[:, None])
        others = log_p.masked_fill(F.one_hot(target, logits.shape[-1]).bool(), float("-inf"))
        return torch.cat([log_target, torch.logsumexp(others, dim=-1, keepdim=True)], dim=-1)

    log_s, log_t = log_pair(student), log_pair(teacher)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
    *,
    target_weight: float,
    nontarget_weight: float,
) -> torch.Tensor:
    """The DKD loss of one batch (see the module docstring); plain cross-entropy without teacher logits."""
    hard = labelled_cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0:
        return hard
    teacher_logits = teacher_logits.to(student_logits.dtype)
    target = torch.where(labels >= 0, labels, teacher_logits.argmax(-1))
    t, batch = temperature, student_logits.shape[0]
    s, te = student_logits / t, teacher_logits / t
    tckd = _binary_kl(s, te, target)
    mask = F.one_hot(target, s.shape[-1]).to(s.dtype) * _MASK
    if s.shape[-1] > 2:
        nckd = F.kl_div(
            F.log_softmax(s - mask, dim=-1), F.log_softmax(te - mask, dim=-1), reduction="sum", log_target=True
        )
    else:  # one non-target class: its renormalised distribution is [1] for both
        nckd = s.new_zeros(())
    soft = (target_weight * tckd + nontarget_weight * nckd) * (t * t) / batch
    return (1 - alpha) * hard + alpha * soft
