"""What the training loop minimises. Every strategy is the same loop with a different objective.

An objective sees the student's logits (and, when it asks for them, the input of the student's
classification head) for a batch, the batch's example indices and labels. Teacher outputs are
looked up by example index in tables computed once (the cached transfer set), so no teacher runs
during training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.train.losses import kd_loss, labelled_cross_entropy


class Objective(torch.nn.Module):
    """Plain cross-entropy on the labels (fine-tuning, labels-only baselines)."""

    needs_features = False

    def loss(
        self, logits: torch.Tensor, features: torch.Tensor | None, indices: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return labelled_cross_entropy(logits, labels)

    def see_batch(self, inputs: dict[str, torch.Tensor]) -> None:
        """Called with each batch's model inputs before :meth:`loss` (a teacher run on the fly needs them)."""

    def start(self, module: torch.nn.Module) -> None:
        """Called once before training with the student's module (objectives that tap its layers hook it here)."""

    def finish(self) -> None:
        """Called once when training ends, however it ends (hooks come off here)."""

    def report(self) -> dict[str, Any]:
        return {}


class LogitKD(Objective):
    """Logit KD (Hinton's by default; ``loss_fn`` any registered logit loss) against one table of
    teacher logits, with optional feature KD: the student's
    head input is projected (a learned linear map when widths differ) onto the teacher's and
    matched by mean squared error, weighted by ``feature_weight``."""

    def __init__(
        self,
        teacher_logits: np.ndarray,
        temperature: float,
        alpha: float,
        teacher_features: np.ndarray | None = None,
        student_width: int | None = None,
        feature_weight: float = 0.0,
        loss_fn=kd_loss,
    ):
        super().__init__()
        self.register_buffer(
            "table", torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32)), persistent=False
        )
        self.temperature, self.alpha = temperature, alpha
        self.loss_fn = loss_fn  # a registered logit loss: (student, teacher, labels, T, alpha) -> loss
        self.feature_weight = feature_weight if teacher_features is not None else 0.0
        self.projection = None
        if self.feature_weight > 0:
            self.register_buffer(
                "feature_table",
                torch.from_numpy(np.ascontiguousarray(teacher_features, dtype=np.float32)),
                persistent=False,
            )
            teacher_width = teacher_features.shape[1]
            self.projection = (
                torch.nn.Identity() if student_width == teacher_width else torch.nn.Linear(student_width, teacher_width)
            )
            self.needs_features = True

    def teacher(self, indices: torch.Tensor) -> torch.Tensor:
        return self.table[indices.to(self.table.device)]

    def report(self) -> dict[str, Any]:
        if self.projection is None:
            return {}
        if isinstance(self.projection, torch.nn.Linear):
            return {"feature_projection": f"linear {self.projection.in_features} -> {self.projection.out_features}"}
        return {"feature_projection": f"identity ({self.feature_table.shape[1]})"}

    def feature_loss(self, features: torch.Tensor | None, indices: torch.Tensor) -> torch.Tensor | float:
        if self.feature_weight == 0 or features is None:
            return 0.0
        target = self.feature_table[indices.to(self.feature_table.device)].to(features.device)
        return self.feature_weight * F.mse_loss(self.projection(features.float()), target)

    def loss(self, logits, features, indices, labels):
        loss = self.loss_fn(logits, self.teacher(indices).to(logits.device), labels, self.temperature, self.alpha)
        return loss + self.feature_loss(features, indices)


class MultiTeacherKD(LogitKD):
    """KD from a weighted ensemble of teachers: z = sum_i beta_i * z_i over their logits.

    The weights stay fixed during training: given ones are normalised to sum to 1; learned ones are
    fitted before training by :func:`fit_teacher_weights` on held-out examples (``fitted`` is that
    fit's report). Fitting them on the training labels, as the student trains, taught nothing: every
    teacher is right on the examples it was trained on, so the weights never left 1/n.
    """

    def __init__(
        self,
        teacher_logits: list[np.ndarray],
        weights: list[float] | None,
        temperature: float,
        alpha: float,
        fitted: dict[str, Any] | None = None,
        **features,
    ):
        stacked = np.stack([np.asarray(t, dtype=np.float32) for t in teacher_logits])  # [teachers, N, classes]
        super().__init__(stacked[0], temperature, alpha, **features)
        self.register_buffer("table", torch.from_numpy(stacked), persistent=False)
        n = len(teacher_logits)
        init = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.fitted = fitted
        self.weight_logits = torch.nn.Parameter(torch.log(torch.tensor(init, dtype=torch.float32)), requires_grad=False)

    def betas(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits, dim=0)

    def teacher(self, indices):
        per_teacher = self.table[:, indices.to(self.table.device)]  # [teachers, batch, classes]
        return torch.einsum("t,tbc->bc", self.betas().to(per_teacher.device), per_teacher)

    def report(self) -> dict[str, Any]:
        return {
            **super().report(),
            "teacher_weights": [round(float(b), 6) for b in self.betas().detach().cpu()],
            "teacher_weights_learned": self.fitted is not None,
            **({"teacher_weights_fit": self.fitted} if self.fitted is not None else {}),
        }


def fit_teacher_weights(teacher_logits: list[np.ndarray], labels: np.ndarray, where: str) -> tuple[list[float], dict]:
    """Ensemble weights beta = softmax(w) that minimise the cross-entropy of sum_i beta_i z_i on
    labelled examples the teachers did not train on (``where`` names them in the report).

    Only examples where the teachers disagree or err move the weights: where every teacher is right
    and sure, each weighting fits about as well. Returns (weights, report: each teacher's accuracy on
    those examples, how many of them the teachers disagree on, the ensemble's cross-entropy at equal and
    at fitted weights)."""
    z = torch.from_numpy(np.stack([np.asarray(t, dtype=np.float64) for t in teacher_logits]))  # [T, N, C]
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.zeros(len(teacher_logits), dtype=torch.float64, requires_grad=True)

    def nll() -> torch.Tensor:
        return F.cross_entropy(torch.einsum("t,tnc->nc", torch.softmax(w, 0), z), y)

    with torch.no_grad():  # (a float of a tensor that needs grad warns on every run)
        equal = float(nll())
    optimizer = torch.optim.LBFGS([w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        return loss

    optimizer.step(closure)
    betas = torch.softmax(w.detach(), 0)
    if not torch.isfinite(betas).all():  # a degenerate fit (e.g. non-finite logits): equal weights
        betas = torch.full_like(betas, 1.0 / len(betas))
    predictions = z.argmax(-1)  # [T, N]
    report = {
        "fitted_on": where,
        "examples": int(len(y)),
        "teacher_accuracy": [round(float((p == y).double().mean()), 6) for p in predictions],
        "disagreements": int((predictions != predictions[:1]).any(0).sum()),
        "ensemble_nll_equal_weights": round(equal, 6),
        "ensemble_nll_fitted": round(float(nll().detach()), 6),
    }
    return [float(b) for b in betas], report
