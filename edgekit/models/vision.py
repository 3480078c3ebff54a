"""torchvision classifiers (ResNet, MobileNet, EfficientNet, ...) with a head sized to the task."""

from __future__ import annotations

import torch

from edgekit.errors import EdgekitError


def _replace_head(model: torch.nn.Module, num_classes: int) -> None:
    if hasattr(model, "fc") and isinstance(model.fc, torch.nn.Linear):
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes)
        return
    classifier = getattr(model, "classifier", None) or getattr(model, "heads", None)
    if isinstance(classifier, torch.nn.Sequential):
        for index in range(len(classifier) - 1, -1, -1):
            if isinstance(classifier[index], torch.nn.Linear):
                classifier[index] = torch.nn.Linear(classifier[index].in_features, num_classes)
                return
    if isinstance(classifier, torch.nn.Linear):
        model.classifier = torch.nn.Linear(classifier.in_features, num_classes)
        return
    raise EdgekitError(f"cannot find the classification head of {type(model).__name__} to resize it")


def build_torchvision(name: str, num_classes: int, pretrained: bool) -> torch.nn.Module:
    """Build torchvision model ``name``; with ``pretrained`` load its default weights (downloads
    once, needs network) and resize the head to ``num_classes``."""
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT")
    except Exception as exc:
        raise EdgekitError(
            f"cannot load pretrained weights for {name} ({str(exc).splitlines()[0]}); "
            "set pretrained: false to train from scratch offline"
        ) from None
    _replace_head(model, num_classes)
    return model
