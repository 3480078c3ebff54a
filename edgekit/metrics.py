"""Classification metrics with numpy only (used on devices too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


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
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(actual[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": confusion.tolist(),
        "labels": list(label_names),
    }


SNR_IDENTICAL_DB = 300.0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of rows whose arg-max label is the same."""
    return float((np.asarray(a).argmax(-1) == np.asarray(b).argmax(-1)).mean())


def snr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-noise ratio of ``approx`` against ``reference`` in decibels (capped at 300 dB, which
    means identical, so that JSON stays finite)."""
    reference = np.asarray(reference, dtype=np.float64)
    noise = np.sum((reference - np.asarray(approx, dtype=np.float64)) ** 2)
    signal = np.sum(reference**2)
    if noise == 0:
        return SNR_IDENTICAL_DB
    return float(min(10 * np.log10(max(signal, 1e-30) / noise), SNR_IDENTICAL_DB))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of lower-cased whitespace tokens (Lin, 2004, with beta = 1)."""
    p, r = prediction.lower().split(), reference.lower().split()
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu, 0-100), mean ROUGE-L F1 (0-1), exact match (0-1)."""
    try:
        import sacrebleu
    except ImportError:
        raise EdgekitError("BLEU needs sacrebleu: pip install sacrebleu") from None

    bleu = sacrebleu.corpus_bleu(predictions, [references]).score if predictions else 0.0
    return {
        "bleu": float(bleu),
        "rouge_l": float(np.mean([rouge_l(p, r) for p, r in zip(predictions, references)])) if predictions else 0.0,
        "exact_match": float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))
        if predictions
        else 0.0,
        "examples": len(predictions),
    }


METRIC_NAMES = {"accuracy": "accuracy", "bleu": "BLEU"}


def budget_score_phrase(budget: dict[str, Any], chosen: dict[str, Any] | None = None) -> str:
    """A --max-drop budget's score (manifest ``quantization.budget``, or one of its trials as ``chosen``):
    'validation accuracy 94.44% vs fp32 94.44%' or 'validation BLEU 41.20 vs fp32 42.00' (points)."""
    metric = budget.get("metric", "accuracy")
    fp32 = budget.get("fp32_score", budget.get("fp32_accuracy"))
    score = (chosen or budget).get("score", (chosen or budget).get("accuracy"))
    if metric == "bleu":
        return f"validation BLEU {score * 100:.2f} vs fp32 {fp32 * 100:.2f}"
    return f"validation accuracy {score:.2%} vs fp32 {fp32:.2%}"
