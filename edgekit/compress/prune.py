"""``edgekit prune``: magnitude pruning made permanent, or structured pruning that shrinks layers,
with optional recovery training; one stage folder recording what it cost and bought.

- ``l1-unstructured`` (the seeds' method): the ``amount`` smallest-|w| weights of every Linear and
  Conv2d are set to zero (torch.nn.utils.prune, made permanent). Shapes stay dense, so the file
  and its latency do not change unless the runtime exploits sparsity — the stage says so in numbers.
- ``heads`` / ``ffn`` / ``channels``: see :mod:`edgekit.compress.structured`.
- ``recover_epochs`` > 0: train afterwards, by distillation from the unpruned model's logits
  (``recover: distill``, the transfer set is cached like any teacher's) or on labels (``finetune``).
  For l1-unstructured the mask stays applied during recovery, so the zeros stay zeros.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from edgekit import log, registry
from edgekit.artifacts import RECIPE_FILE, is_stage
from edgekit.errors import EdgekitError
from edgekit.records import StageMeta
from edgekit.stage_runner import Stage, load_data
from edgekit.tasks import task_spec


def prunable_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def l1_unstructured(module: torch.nn.Module, amount: float, permanent: bool = True) -> dict[str, float]:
    """Zero the ``amount`` fraction of smallest-magnitude weights in every Linear and Conv2d layer.
    With ``permanent=False`` the mask stays as a reparametrisation (weight = weight_orig * mask),
    so training keeps the zeros; :func:`make_permanent` ends it."""
    from torch.nn.utils import prune

    for _, layer in prunable_layers(module):
        prune.l1_unstructured(layer, "weight", amount=amount)
        if permanent:
            prune.remove(layer, "weight")
    return layer_sparsity(module)


def make_permanent(module: torch.nn.Module) -> None:
    from torch.nn.utils import prune

    for _, layer in prunable_layers(module):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")


def layer_sparsity(module: torch.nn.Module) -> dict[str, float]:
    return {name: float((m.weight == 0).float().mean()) for name, m in prunable_layers(module)}


def count_nonzero(module: torch.nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in module.parameters())


def _check(method: str, amount: float) -> None:
    entry = registry.get("pruner", method, option="--method")
    if entry.can("amount", True) and not 0 < amount < 1:
        raise EdgekitError(f"--amount {amount} must be between 0 and 1 (exclusive), e.g. 0.3")


def prune_stage(
    model_dir: Path,
    out: Path,
    *,
    method: str,
    amount: float,
    recover_epochs: int = 0,
    recover: str = "distill",
    calib_samples: int = 256,
    keep_tokens: int = 0,
    recipe=None,
    force: bool = False,
    reuse: bool = False,
    resume: bool = False,
) -> StageMeta:
    """Prune a model stage by ``method`` (a pruner entry) and, with ``recover_epochs``, train it back
    (KD from the unpruned model, or fine-tuning); the pruned model is a new stage folder ``out``.
    ``keep_tokens`` (vocab only): also keep the first N ids of the tokenizer's vocabulary (its most
    common tokens in frequency-ordered vocabularies), for texts the training data does not cover."""
    from edgekit.models.load import load_saved
    from edgekit.recipe import load_recipe
    from edgekit.train.evaluate import evaluate

    _check_options(method, amount, recover, recover_epochs, calib_samples)
    if isinstance(keep_tokens, bool) or not isinstance(keep_tokens, int) or keep_tokens < 0:
        raise EdgekitError(f"--keep-tokens {keep_tokens} must be a whole number, 0 or more")
    if keep_tokens and method != "vocab":
        raise EdgekitError(f"--keep-tokens is for --method vocab (it keeps vocabulary ids); drop it for {method}")
    model_dir = Path(model_dir)
    if not is_stage(model_dir) or not (model_dir / RECIPE_FILE).is_file():
        raise EdgekitError(
            f"{model_dir} is not an edgekit model stage (finetune, distill, lora or prune output folder); "
            "prune needs its model and the data it was trained on"
        )
    recipe = recipe or load_recipe(model_dir / RECIPE_FILE)
    config, train_cfg = _config(method, amount, recover, recover_epochs, calib_samples, recipe)
    if keep_tokens:
        config["keep_tokens"] = keep_tokens
    stage = Stage("prune", out, config, parent=model_dir)
    if (meta := stage.reused(reuse)) is not None:
        return meta
    handle = load_saved(model_dir)
    pruner = _pruner_for(method, handle)
    data = load_data(recipe)
    before = evaluate(handle, data.eval_split, desc=f"evaluate {handle.arch} before pruning")
    params_before, nonzero_before = handle.parameter_count(), count_nonzero(handle.module)
    objective = None
    if recover_epochs and recover == "distill":  # the unpruned model's logits, before any weight changes
        from edgekit.train.objectives import LogitKD
        from edgekit.train.transfer import transfer_set

        teacher = transfer_set(handle, data.train, cache=recipe.distill.cache, desc="unpruned model logits")
        objective = LogitKD(teacher.logits, recipe.distill.temperature, recipe.distill.alpha)

    with stage.folder(force) as folder:
        how = f"{method} {amount:.0%}" if pruner.can("amount", True) else method
        log.info(f"prune: {how} of {handle.arch} ({params_before / 1e6:.2f} M parameters)")
        options = {"keep_first": keep_tokens} if keep_tokens else {}
        report = _apply(pruner, handle, data, method, amount, calib_samples, not recover_epochs, options)
        pruned = evaluate(handle, data.eval_split, desc="evaluate pruned model")
        key = task_spec(handle.task).score_key
        log.info(
            f"  {key} {before[key]:.4g} -> {pruned[key]:.4g} after pruning; "
            f"{handle.parameter_count() / 1e6:.2f} M parameters, {count_nonzero(handle.module) / 1e6:.2f} M non-zero"
        )
        history = None
        if recover_epochs:
            history = _recover(handle, data, train_cfg, objective, recipe, stage, out, recover, resume)
        metrics = _pruned_metrics(handle, data, before, pruned, report)
        handle.save(folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        return stage.finish(
            config={**config, "model": handle.arch},
            metrics=metrics,
            parameters=handle.parameter_count(),
            extra={
                "parameters_before": params_before,
                "nonzero_parameters_before": nonzero_before,
                "nonzero_parameters": metrics["nonzero_parameters"],
                "history": history,
                "structure": handle.extra.get("structure"),
            },
        )


def _check_options(method: str, amount: float, recover: str, recover_epochs: int, calib_samples: int) -> None:
    _check(method, amount)
    if recover not in ("distill", "finetune"):
        raise EdgekitError(f"--recover {recover!r} is not one of distill, finetune")
    if recover_epochs < 0:
        raise EdgekitError(f"--recover-epochs {recover_epochs} must be 0 or more")
    if not 1 <= calib_samples <= 100_000:
        raise EdgekitError(f"--calib-samples {calib_samples} must be from 1 to 100000")


def _config(method, amount, recover, recover_epochs, calib_samples, recipe) -> tuple[dict[str, Any], Any]:
    """The stage's config (what its fingerprint is made of) and the recovery's training settings."""
    config = {
        "method": method,
        "amount": amount,
        "recover_epochs": recover_epochs,
        "recover": recover,
        "calib_samples": calib_samples,
    }
    train_cfg = replace(recipe.distill.train, epochs=max(recover_epochs, 1))
    if recover_epochs:
        config["train"] = asdict(train_cfg)
        if recover == "distill":
            config["temperature"], config["alpha"] = recipe.distill.temperature, recipe.distill.alpha
    return config, train_cfg


def _pruner_for(method: str, handle):
    """The pruner entry, refused before any work for a model it does not handle."""
    pruner = registry.get("pruner", method)
    if task_spec(handle.task).generates and not pruner.can("seq2seq", False):
        fits = ", ".join(registry.names("pruner", seq2seq=True))
        raise EdgekitError(f"--method {method} is for classifiers; encoder-decoders (T5) can be pruned with {fits}")
    if handle.family not in pruner.can("families", ()):
        fits = ", ".join(registry.names("pruner", families=handle.family))
        raise EdgekitError(f"--method {method} needs {pruner.can('needs')}; {handle.arch} is not one: use {fits}")
    return pruner


def _apply(
    pruner, handle, data, method: str, amount: float, calib_samples: int, permanent: bool, options=None
) -> dict[str, Any]:
    """Prune ``handle`` in place; a structured pruner's report (what it removed), recorded in the structure."""
    if not pruner.can("structured"):  # zeros; during recovery the mask stays, so they stay zeros
        pruner.load()(handle.module, amount, permanent=permanent)
        return {}
    check = {"check": data.val} if pruner.can("validates", False) else {}
    report = pruner.load()(handle, data.train, amount, calib_samples, **check, **(options or {}))
    structure = handle.extra.get("structure") or {}
    heads = dict(structure.get("heads", {}))
    heads.update(report.pop("heads", {}))
    step = {"method": method, "amount": amount} if pruner.can("amount", True) else {"method": method}
    pruned = [*structure.get("pruned", []), step]
    handle.extra = {**handle.extra, "structure": {"heads": heads, "pruned": pruned}}
    return report


def _recover(handle, data, train_cfg, objective, recipe, stage, out, recover: str, resume: bool):
    """Train the pruned model back (checkpointed, resumable); its history."""
    from edgekit.train.checkpoint import Checkpointing
    from edgekit.train.loop import train

    ckpt = Checkpointing.for_stage(out, stage.fingerprint, recipe.distill.checkpoint_every, resume)
    result = train(
        handle,
        data,
        train_cfg,
        seed=recipe.seed,
        objective=objective,
        checkpoint=ckpt,
        desc=f"recover ({recover})",
        deterministic=recipe.distill.deterministic,
    )
    make_permanent(handle.module)
    shutil.rmtree(ckpt.folder, ignore_errors=True)
    return result.history


def _pruned_metrics(handle, data, before, pruned, report) -> dict[str, Any]:
    from edgekit.train.evaluate import model_metrics

    metrics = model_metrics(handle, data)
    total = sum(m.weight.numel() for _, m in prunable_layers(handle.module))
    zeros = sum(int((m.weight == 0).sum()) for _, m in prunable_layers(handle.module))
    key = task_spec(handle.task).score_key  # accuracy, or BLEU for seq2seq
    metrics.update(
        {"score_metric": key, f"{key}_before": before[key], f"{key}_pruned": pruned[key]},
        **({"macro_f1_before": before["macro_f1"]} if "macro_f1" in before else {}),
        sparsity=zeros / total,
        layer_sparsity=layer_sparsity(handle.module),
        nonzero_parameters=count_nonzero(handle.module),
        **report,
    )
    return metrics
