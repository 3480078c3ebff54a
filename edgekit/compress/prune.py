"""Magnitude pruning made permanent (the zeros are written into the weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgekit.artifacts import RECIPE_FILE, stage_folder, write_meta
from edgekit.errors import EdgekitError

METHODS = ("l1-unstructured",)


def prunable_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def l1_unstructured(module: torch.nn.Module, amount: float) -> dict[str, float]:
    """Zero the ``amount`` fraction of smallest-magnitude weights in every Linear and Conv2d layer."""
    from torch.nn.utils import prune

    sparsity = {}
    for name, layer in prunable_layers(module):
        prune.l1_unstructured(layer, "weight", amount=amount)
        prune.remove(layer, "weight")
        sparsity[name] = float((layer.weight == 0).float().mean())
    return sparsity


def prune_stage(model_dir: Path, out: Path, *, method: str, amount: float, force: bool = False) -> dict[str, Any]:
    from edgekit import stages
    from edgekit.distill.trainer import evaluate
    from edgekit.models.handle import load_saved
    from edgekit.recipe import load_recipe

    if method not in METHODS:
        raise EdgekitError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if not 0 < amount < 1:
        raise EdgekitError(f"--amount {amount} must be between 0 and 1 (exclusive), e.g. 0.3")
    handle = load_saved(Path(model_dir))
    recipe = load_recipe(Path(model_dir) / RECIPE_FILE)
    data = stages.load_data(recipe)
    before = evaluate(handle, data.eval_split)["accuracy"]
    with stage_folder(out, force) as folder:
        per_layer = l1_unstructured(handle.module, amount)
        layers = prunable_layers(handle.module)
        total = sum(m.weight.numel() for _, m in layers)
        zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
        metrics = evaluate(handle, data.eval_split)
        metrics.update(accuracy_before=before, sparsity=zeros / total, layer_sparsity=per_layer,
                       nonzero_parameters=sum(int((p != 0).sum()) for p in handle.module.parameters()))
        handle.save(folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        return write_meta(folder, stage="prune", config={"method": method, "amount": amount, "model": handle.arch},
                          parent=Path(model_dir), metrics=metrics, parameters=handle.parameter_count(),
                          fingerprint_value=stages.stage_fingerprint("prune", {"method": method, "amount": amount},
                                                                     Path(model_dir)))
