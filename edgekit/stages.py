"""The stages of the flow. Each reads the folder before it and writes one stage folder.

    finetune (teacher) -> distill (student) -> export (bundle) -> evaluate -> bench

CLI commands call one stage each; ``edgekit run`` chains them and skips a stage whose
folder already holds the same fingerprint (same config, same parent).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from edgekit import registry
from edgekit.artifacts import RECIPE_FILE, is_stage, write_json_atomic
from edgekit.errors import EdgekitError
from edgekit.log import info as log
from edgekit.processes import is_main
from edgekit.recipe import Recipe
from edgekit.records import StageMeta
from edgekit.stage_runner import Stage, load_data, task_of
from edgekit.tasks import task_spec


def save_model_stage(
    stage: Stage, folder: Path, handle, recipe: Recipe, metrics: dict, extra: dict | None = None, **fields
) -> StageMeta:
    """A model stage's files: the model (safetensors), the recipe that made it, meta.json."""
    handle.save(folder)
    (folder / RECIPE_FILE).write_text(recipe.to_yaml())
    return stage.finish(metrics=metrics, parameters=handle.parameter_count(), extra=extra, **fields)


def finetune(
    recipe: Recipe,
    out: Path,
    force: bool = False,
    data=None,
    reuse: bool = False,
    resume: bool = False,
    model: str | None = None,
    lora=None,
) -> StageMeta:
    """Train ``model`` (default: the recipe's teacher) on the task and save it as a stage: a full
    fine-tune, or with ``lora`` (a :class:`edgekit.recipe.LoraStageConfig`) LoRA adapters, over an
    NF4 base when ``lora.qlora``, merged back into a plain model (see :mod:`edgekit.compress.lora`)."""
    import shutil

    from edgekit.train.checkpoint import Checkpointing
    from edgekit.train.evaluate import model_metrics
    from edgekit.train.loop import train

    model = model or recipe.teacher.model
    train_cfg = lora.train if lora else (recipe.teacher.train or recipe.distill.train)
    stage = ("qlora" if lora.qlora else "lora") if lora else "finetune"
    config = {
        "model": model,
        "pretrained": recipe.teacher.pretrained,
        "train": asdict(train_cfg),
        "data": asdict(recipe.data),
        "task": task_of(recipe),
        "seed": recipe.seed,
    }
    if lora:
        config["lora"] = {k: v for k, v in asdict(lora).items() if k != "train"}
    run = Stage(stage, out, config, parent=Path(model) if is_stage(Path(model)) else None)  # e.g. LoRA on a student
    if (meta := run.reused(reuse)) is not None:
        return meta
    data = data or load_data(recipe)
    handle = _load_to_train(recipe, model, data)
    trained, extra = _with_adapters(handle, lora, data, stage) if lora else (handle, {})
    with run.folder(force) as folder:
        log(f"{stage}: {_described(handle, trained, lora, stage)} on {len(data.train)} examples")
        ckpt = Checkpointing.for_stage(out, run.fingerprint, recipe.distill.checkpoint_every, resume)
        result = train(
            trained,
            data,
            train_cfg,
            seed=recipe.seed,
            desc=f"{stage} {handle.arch}",
            checkpoint=ckpt,
            deterministic=recipe.distill.deterministic,
        )
        if lora:
            from edgekit.compress.lora import merge_checked

            handle, extra["merge"] = merge_checked(trained, handle, data, folder)
        metrics = model_metrics(handle, data)
        metrics.update(result.summary())
        meta = save_model_stage(
            run,
            folder,
            handle,
            recipe,
            metrics,
            {"history": result.history, "resumed_from": result.resumed_from, **extra},
        )
    if is_main():
        shutil.rmtree(ckpt.folder, ignore_errors=True)
    return meta


def _load_to_train(recipe: Recipe, model: str, data):
    """``model`` loaded for the task's labels and the recipe's input sizes, after seeding (the initial
    weights of a model trained from scratch, or of a new head, follow the recipe's seed)."""
    from edgekit.models import load_model
    from edgekit.train.loop import seed_everything

    seed_everything(recipe.seed)
    return load_model(
        model,
        task=data.task,
        label_names=data.label_names,
        pretrained=recipe.teacher.pretrained,
        image_size=recipe.data.image_size,
        max_length=recipe.data.max_length,
        max_target_length=recipe.data.max_target_length,
    )


def _with_adapters(handle, lora, data, stage: str):
    """The model LoRA trains (adapters on ``handle``, over an NF4 copy for QLoRA) and the metrics the
    stage records before training: the model's own, and for QLoRA the 4-bit base alone."""
    from edgekit.compress.lora import with_lora
    from edgekit.train.evaluate import evaluate

    extra = {"metrics_before": evaluate(handle, data.eval_split, desc=f"evaluate {handle.arch} before {stage}")}
    trained = with_lora(handle, lora, quantized=lora.qlora)
    if lora.qlora:  # adapters start at zero: this is the 4-bit base alone, i.e. what NF4 costs
        extra["metrics_nf4_base"] = evaluate(trained, data.eval_split, desc="evaluate NF4 base")
    return trained, extra


def _described(handle, trained, lora, stage: str) -> str:
    """``bert (4.39 M parameters, 0.041 M trainable (lora r=8 on query, value))`` for the stage's log line."""
    what = ""
    if lora:
        info = trained.extra["lora"]
        targets = ", ".join(info["target_modules"][:4]) + (", ..." if len(info["target_modules"]) > 4 else "")
        what = f", {info['trainable_parameters'] / 1e6:.3f} M trainable ({stage} r={lora.r} on {targets})"
    return f"{handle.arch} ({handle.parameter_count() / 1e6:.2f} M parameters{what})"


def distill(
    recipe: Recipe, teacher, out: Path, force: bool = False, data=None, reuse: bool = False, resume: bool = False
) -> StageMeta:
    """Distil ``teacher`` (a stage folder or a model that already knows the task; a list for the
    multi-teacher strategy) into the recipe's student(s). See :mod:`edgekit.distill.engine`."""
    from edgekit.distill.engine import distill as run_distill

    return run_distill(recipe, teacher, out, data=data, force=force, reuse=reuse, resume=resume)


def export(
    model_dir: str,
    out: Path,
    *,
    preset_name: str | None,
    precision: str | None = None,
    fmt: str | None = None,
    mode: str | None = None,
    recipe: Recipe | None = None,
    calib_samples: int | None = None,
    min_agreement: float | None = None,
    allow_drop: bool = False,
    force: bool = False,
    reuse: bool = False,
    devices: list[str] | None = None,
    ssh=None,
    kv_cache: bool | None = None,
    max_drop: float | None = None,
) -> StageMeta:
    """Export a model stage folder (or a model id) to a parity-checked ONNX or TorchScript bundle.
    ``max_drop``: the most validation accuracy (points) quantization may cost (edgekit.export.budget).

    A lossy bundle's parity is judged on ``devices`` (emulated) or over ``ssh`` on the device, and for a
    preset that targets another machine type on its emulated devices when they are built."""
    from edgekit.export.bundle import build_bundle
    from edgekit.targets import parity_targets

    preset = _export_preset(preset_name, fmt, precision, mode, calib_samples, min_agreement, kv_cache, max_drop)
    targets, warning = parity_targets(preset, devices or [], ssh) if preset.precision != "fp32" else ([], None)
    if warning:
        log(warning)
    source = Path(model_dir)
    if recipe is None and is_stage(source) and (source / RECIPE_FILE).is_file():
        from edgekit.recipe import load_recipe

        recipe = load_recipe(source / RECIPE_FILE)
    config = {"source": str(model_dir), "preset": preset.to_json()}
    run = Stage("export", out, config, parent=source if is_stage(source) else None)
    if (meta := run.reused(reuse)) is not None:
        return meta
    data = load_data(recipe) if recipe is not None else None
    handle = _model_to_export(model_dir, source, data, preset)
    with run.folder(force) as folder:
        writer = registry.get("format", preset.format)
        target = f"ONNX opset {preset.opset}" if writer.can("runtime") == "onnxruntime" else writer.can("title")
        log(f"export: {handle.arch} -> {target} {preset.precision} (preset {preset.name})")
        manifest = build_bundle(
            handle,
            folder,
            preset,
            calibration=data.train if data else None,
            parity_split=data.val if data else None,
            source_stage=source if is_stage(source) else None,
            allow_drop=allow_drop,
            targets=targets,
        )
        if recipe is not None:
            (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        metrics = {"parity_" + k: v["label_agreement"] for k, v in manifest.parity.items()}
        meta = run.finish(
            metrics=metrics,
            parameters=manifest.parameters,
            extra={
                "model_bytes": manifest.sizes["model_bytes"],
                "fp32_model_bytes": manifest.sizes["fp32_model_bytes"],
                "size_breakdown": manifest.sizes.get("breakdown"),
                "quantization": manifest.quantization,
                "format": manifest.format,
                "precision": manifest.precision,
                "graph_optimization": (manifest.graph_optimization or {}).get("kept"),
            },
        )
    return meta


def _export_preset(preset_name, fmt, precision, mode, calib_samples, min_agreement, kv_cache, max_drop):
    """The export preset (by name, or the default for the format and precision) with the command's
    overrides applied; checked again when a budget is set."""
    from edgekit.export.presets import check_preset, load_preset

    preset = load_preset(preset_name, fmt, precision, mode)
    if calib_samples:
        preset.calib_samples = calib_samples
    if min_agreement is not None:
        preset.parity["min_agreement"] = min_agreement
    if kv_cache is not None:
        preset.kv_cache = kv_cache
    if max_drop is not None:
        preset.max_drop = max_drop
        check_preset(preset)
    return preset


def _model_to_export(model_dir: str, source: Path, data, preset):
    """The model to export (a stage folder's, or a model id loaded for the data's labels), refused in one
    line before the fp32 export when its labels differ from the data's or the preset cannot take it."""
    from edgekit.export.presets import model_refusal
    from edgekit.models import load_model
    from edgekit.models.load import load_saved

    if is_stage(source):
        handle = load_saved(source)
    else:
        if data is None:
            raise EdgekitError(
                f"{model_dir} is not an edgekit stage folder; give --train/--dataset so labels and calibration data are known"
            )
        handle = load_model(str(model_dir), task=data.task, label_names=data.label_names)
    if data is not None and data.label_names != handle.label_names:
        raise EdgekitError(f"the data's labels {data.label_names} differ from the model's {handle.label_names}")
    if refuse := model_refusal(preset, convolutional=handle.convolutional()):
        raise EdgekitError(refuse)
    return handle


def evaluate_bundle(
    bundle_dir: Path,
    split,
    out: Path | None = None,
    force: bool = False,
    threads: int = 0,
    config: dict | None = None,
    metrics: dict | None = None,
) -> dict:
    """Accuracy, F1 and confusion matrix of the exported file itself, on onnxruntime (torch-free).
    ``metrics`` measured elsewhere (on a device, or emulated) are recorded instead of computed here."""
    from edgekit.records import read_manifest
    from edgekit.runtime import Bundle

    if metrics is None:
        bundle = Bundle(bundle_dir, threads=threads)
        metrics = task_spec(bundle.task).job("bundle_metrics")(bundle, split)
    metrics["split"] = split.name
    if out is not None:
        run = Stage("eval", out, config or {}, parent=Path(bundle_dir))
        with run.folder(force) as folder:
            write_json_atomic(folder / "metrics.json", metrics)
            run.finish(
                metrics=metrics,
                parameters=read_manifest(bundle_dir).parameters,
                config=config or {"bundle": str(bundle_dir)},
            )
    return metrics


def evaluate_stage(
    stage_dir: Path,
    *,
    test: str | None,
    dataset: str | None,
    split: str = "test",
    text_column: str | None = None,
    label_column: str | None = None,
) -> dict:
    """Accuracy, F1 and confusion matrix of a model stage folder's PyTorch model (needs the train extra)."""
    from edgekit.data.splits import load_eval_split
    from edgekit.metrics import classification_metrics
    from edgekit.models.load import load_saved
    from edgekit.recipe import DataConfig
    from edgekit.train.evaluate import predict_logits

    handle = load_saved(Path(stage_dir))
    if task_spec(handle.task).generates:
        raise EdgekitError(
            f"{stage_dir} is an encoder-decoder; export it (edgekit export) and evaluate the bundle, "
            "which generates and scores BLEU/ROUGE-L"
        )
    cfg = DataConfig(
        dataset=dataset,
        train=None,
        test=test,
        text_column=text_column or "text",
        label_column=label_column or "label",
        image_size=handle.preprocessing.get("image_size"),
    )
    data_split = load_eval_split(cfg, handle.task, handle.label_names, split)
    logits = predict_logits(handle, data_split, desc="evaluate")
    metrics = classification_metrics(data_split.labels, logits.argmax(-1), handle.label_names)
    metrics["split"], metrics["runtime"] = data_split.name, "pytorch"
    return metrics
