"""Classification metrics with numpy only (used on devices too)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict[str, Any]:
    """Accuracy and macro F1 as fractions in [0, 1], per-class precision/recall/F1 and the confusion
    matrix (rows: true label, columns: predicted label)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(label_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    true_pos = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    actual = confusion.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_pos / predicted, 0.0)
        recall = np.where(actual > 0, true_pos / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = actual > 0
    return {
        "accuracy": float(true_pos.sum() / max(len(y_true), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "examples": int(len(y_true)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.tolist(),
        "labels": list(label_names),
    }


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose arg-max label is the same."""
    return float((np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)).mean())


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of ``approx`` against ``reference`` in decibels."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(approx, dtype=np.float64)) ** 2)
    signal = np.sum(reference**2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(max(signal, 1e-30) / noise))
