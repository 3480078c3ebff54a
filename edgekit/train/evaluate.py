"""Scoring a PyTorch model during and after training: logits over a split, the task's metrics, the
validation score that picks the best epoch, and what a model stage records."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from edgekit.data.splits import Split, TaskData
from edgekit.metrics import classification_metrics
from edgekit.models.handle import ModelHandle
from edgekit.tasks import task_spec
from edgekit.train.data import make_dataset, make_loader


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HeadInput:
    """Captures the input of the classification head during forward (for feature KD)."""

    def __init__(self, head: torch.nn.Module):
        self.value = None
        self.hook = head.register_forward_pre_hook(self._grab)

    def _grab(self, module, args):
        self.value = args[0]

    def close(self):
        self.hook.remove()


def predict_logits(
    handle: ModelHandle,
    split: Split,
    batch_size: int = 128,
    desc: str | None = None,
    device: torch.device | None = None,
    features: bool = False,
):
    """Logits of ``handle`` for every example of ``split``, in split order; with ``features`` also
    the input of the classification head (``(logits, features)``)."""
    device = device or pick_device()
    handle.module.to(device)
    return predict_dataset(handle, make_dataset(handle, split), batch_size, device, desc, features)


def evaluate(handle: ModelHandle, split: Split, batch_size: int = 128, desc: str | None = None) -> dict[str, Any]:
    """The task's metrics of the PyTorch model on ``split`` (its spec's ``evaluate_model`` job):
    accuracy, macro F1, per-class and confusion matrix for classifiers; BLEU and ROUGE-L for seq2seq."""
    return task_spec(handle.task).job("evaluate_model")(handle, split, batch_size, desc)


def evaluate_classifier(
    handle: ModelHandle, split: Split, batch_size: int = 128, desc: str | None = None
) -> dict[str, Any]:
    logits = predict_logits(handle, split, batch_size, desc)
    return classification_metrics(split.labels, logits.argmax(-1), handle.label_names)


def model_metrics(handle: ModelHandle, data: TaskData) -> dict[str, Any]:
    """What a model stage records: the task's metrics on the evaluation split, its score on the
    validation split and, where it means something, the PyTorch model's batch-1 latency (a
    generating model's depends on the output length)."""
    from edgekit.bench.torch_latency import torch_latency

    spec = task_spec(handle.task)
    metrics = evaluate(handle, data.eval_split, desc=f"evaluate {handle.arch}")
    metrics["split"] = data.eval_split.name
    metrics[spec.validation_key] = spec.score(evaluate(handle, data.val))
    if spec.times_model:
        metrics["latency_ms"] = torch_latency(handle)
    else:
        handle.module.cpu()
    return metrics


def validation_score(handle: ModelHandle, dataset, split: Split, batch_size: int, device) -> tuple[str, float]:
    """The metric that picks the best epoch: the task's score (accuracy; BLEU of generations for seq2seq)."""
    spec = task_spec(handle.task)
    if spec.generates:
        return spec.validation_key, spec.score(spec.job("evaluate_model")(handle, split, batch_size, None))
    logits = predict_dataset(handle, dataset, batch_size, device)
    return "val_accuracy", float((logits.argmax(-1) == split.labels).mean())


@torch.no_grad()
def predict_dataset(
    handle: ModelHandle, dataset, batch_size: int, device, desc: str | None = None, features: bool = False
):
    handle.module.eval()
    loader = make_loader(dataset, batch_size, shuffle=False)
    outputs = np.zeros((len(dataset), len(handle.label_names)), dtype=np.float32)
    head_input = HeadInput(handle.head()) if features else None
    feature_rows = None
    try:
        for indices, inputs, _ in tqdm(
            loader, desc=desc, leave=False, disable=True if desc is None else None, file=sys.stderr
        ):
            outputs[indices.numpy()] = handle.logits({k: v.to(device) for k, v in inputs.items()}).float().cpu().numpy()
            if head_input is not None:
                value = head_input.value.float().reshape(len(indices), -1).cpu().numpy()
                if feature_rows is None:
                    feature_rows = np.zeros((len(dataset), value.shape[1]), dtype=np.float32)
                feature_rows[indices.numpy()] = value
    finally:
        if head_input is not None:
            head_input.close()
    return (outputs, feature_rows) if features else outputs
