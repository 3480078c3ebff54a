"""Score an exported bundle on a split, torch-free: what ``edgekit eval`` runs here or on a device.
Each task's spec names its function (the ``bundle_metrics`` job)."""

from __future__ import annotations

from typing import Any


def classifier_metrics(bundle, split) -> dict[str, Any]:
    """Accuracy, macro F1, per-class figures and the confusion matrix of the bundle's labels."""
    from edgekit.metrics import classification_metrics

    logits = bundle.predict(split.items, progress=True)
    return classification_metrics(split.labels, logits.argmax(-1), bundle.label_names)


def generation_metrics_of(bundle, split) -> dict[str, Any]:
    """BLEU and ROUGE-L of the bundle's greedy generations against the reference targets, with samples."""
    from edgekit.metrics import generation_metrics

    predictions = bundle.generate(list(split.items), progress=True)
    metrics = generation_metrics(predictions, [str(t) for t in split.labels])
    metrics["samples"] = [
        {"source": s, "prediction": p, "reference": str(r)}
        for s, p, r in list(zip(split.items, predictions, split.labels))[:5]
    ]
    return metrics
