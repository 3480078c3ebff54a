"""``edgekit run``: chain the stages of a recipe in one run folder (its layout: :mod:`edgekit.layout`).

With a ``sweep:`` section ``student/`` is replaced by ``sweep/<strategy>-<student>/`` cells (see
:mod:`edgekit.sweep`), each exported and measured; the best (or named) cell goes on through lora/prune/export.

``lora`` runs when ``lora.enabled`` (or ``lora.qlora``) is set, ``pruned`` when ``prune.method`` is;
each takes the model before it, and the export takes the last.

A stage whose folder already holds the same fingerprint (same config, same parent) is reused,
so an interrupted run continues where it stopped and an unchanged one finishes at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit import layout, log, stages
from edgekit.artifacts import write_json_atomic, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe
from edgekit.records import StageMeta, read_meta
from edgekit.stage_runner import Stage, load_data, task_of
from edgekit.tasks import task_spec


def preflight(recipe: Recipe) -> int | None:
    """Everything that can be checked before training: task, devices, providers, preset, prune method,
    sweep. Returns the teacher's layer count when its config says it (None for CNNs or when unknown)."""
    from edgekit.bench.profiles import check_providers, load_profile
    from edgekit.export.presets import load_preset

    task_of(recipe)
    for device in recipe.bench.devices:
        check_providers(load_profile(device))
    e = recipe.export
    load_preset(e.preset, e.format, e.resolved_precision, e.mode)
    _check_prune_method(recipe)
    if not recipe.sweep.active:
        return None
    from edgekit import sweep
    from edgekit.models.handle import is_torchvision_name

    n_teacher = sweep.teacher_layers(recipe.teacher.model)
    sweep.check(recipe, n_teacher, cnn_teacher=is_torchvision_name(recipe.teacher.model))
    return n_teacher


def _check_prune_method(recipe: Recipe) -> None:
    """A pruner handles some model families (heads/ffn transformers, channels CNNs): say so before any training."""
    method = recipe.prune.method
    if not method:
        return
    from edgekit import registry
    from edgekit.models.handle import is_torchvision_name

    pruner = registry.get("pruner", method)
    families = pruner.can("families", ())

    def others(family: str) -> str:
        return ", ".join(n for n in registry.names("pruner", families=family) if n != method)

    if recipe.sweep.active:  # None: derived from the teacher by keeping layers (a transformer)
        students = [None if s.isdigit() else s for s in recipe.sweep.students]
    else:
        students = [None if recipe.student.layers else recipe.student.model]
    for student in students:
        family = "hf" if student is None or not is_torchvision_name(student) else "torchvision"
        if family in families:
            continue
        what = (
            "the students are derived transformers (layer counts)"
            if student is None
            else f"the student {student} is {'a CNN' if family == 'torchvision' else 'not a torchvision CNN'}"
        )
        raise EdgekitError(
            f"recipe field prune.method: {method} prunes {pruner.can('prunes')}, but {what}; use {others(family)}"
        )


def run(recipe: Recipe, out: Path, fresh: bool = False) -> dict[str, Any]:
    n_teacher = preflight(recipe)
    data = load_data(recipe)  # a missing or empty dataset fails here, before any folder is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"--out {out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()) and not layout.is_run_folder(out):
        raise EdgekitError(f"--out {out} exists and is not an edgekit run folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from edgekit.artifacts import lock_output

    lock_output(out)  # one `edgekit run` per run folder
    write_text_atomic(out / layout.RECIPE, recipe.to_yaml())
    reuse = not fresh

    teacher: str = recipe.teacher.model
    if recipe.teacher.train is not None:
        stages.finetune(recipe, out / layout.TEACHER, force=True, data=data, reuse=reuse)
        teacher = str(out / layout.TEACHER)
    if recipe.sweep.active:
        model = run_sweep(recipe, teacher, out, data, reuse, n_teacher)
    else:
        stages.distill(recipe, teacher, out / layout.STUDENT, force=True, data=data, reuse=reuse)
        model = out / layout.STUDENT
    if recipe.lora.active:
        stages.finetune(
            recipe, out / layout.LORA, force=True, data=data, reuse=reuse, model=str(model), lora=recipe.lora
        )
        model = out / layout.LORA
    if recipe.prune.method:
        from edgekit.compress.prune import prune_stage

        p = recipe.prune
        prune_stage(
            model,
            out / layout.PRUNED,
            method=p.method,
            amount=p.amount,
            recover_epochs=p.recover_epochs,
            recover=p.recover,
            calib_samples=p.calib_samples,
            keep_tokens=p.keep_tokens,
            recipe=recipe,
            force=True,
            reuse=reuse,
        )
        model = out / layout.PRUNED
    ship(model, out, recipe, data, reuse)
    from edgekit.report import write_report

    return write_report([out], out)


def ship(model: Path, out: Path, recipe: Recipe, data, reuse: bool) -> None:
    """export/ -> eval/ (the exported file on its runtime) -> bench-<device>/ for every device, in ``out``."""
    stages.export(
        str(model),
        out / layout.EXPORT,
        preset_name=recipe.export.preset,
        precision=recipe.export.resolved_precision,
        fmt=recipe.export.format,
        mode=recipe.export.mode,
        recipe=recipe,
        calib_samples=recipe.export.calib_samples,
        min_agreement=recipe.export.min_agreement,
        max_drop=recipe.export.max_drop,
        force=True,
        reuse=reuse,
    )
    eval_config = {"bundle": "export", "split": data.eval_split.name, "data": recipe.to_dict()["data"]}
    if Stage("eval", out / layout.EVAL, eval_config, parent=out / layout.EXPORT).reused(reuse) is None:
        stages.evaluate_bundle(out / layout.EXPORT, data.eval_split, out / layout.EVAL, force=True, config=eval_config)
    for device in recipe.bench.devices:
        bench_stage(out / layout.EXPORT, layout.bench_folder(out, device), device, recipe, reuse)


def run_sweep(recipe: Recipe, teacher: str, out: Path, data, reuse: bool, n_teacher: int | None) -> Path:
    """Train every cell of the sweep, export and measure each, write sweep.json; the shipped student."""
    from edgekit import sweep

    if n_teacher is None and any(s.isdigit() for s in recipe.sweep.students):
        from edgekit.distill.derive import layer_count
        from edgekit.models import load_model

        n_teacher = layer_count(load_model(teacher, task=data.task, label_names=data.label_names))
        sweep.check(recipe, n_teacher, cnn_teacher=False)
    cells = sweep.plan(recipe, out, n_teacher)
    by_name = {c.name: c for c in cells}
    for i, cell in enumerate(cells, start=1):
        teachers = [sweep.resolve_teacher(t, by_name, teacher) for t in cell.teachers]
        log.info(f"sweep {i}/{len(cells)}: {cell.name} ({cell.strategy}, taught by {', '.join(cell.teachers)})")
        stages.distill(
            sweep.cell_recipe(recipe, cell),
            teachers if len(teachers) > 1 else teachers[0],
            cell.stage,
            force=True,
            data=data,
            reuse=reuse,
        )
    metas = {c.name: read_meta(c.stage) for c in cells}
    for cell in cells:
        if cell.in_table:
            ship(cell.stage, cell.folder, sweep.cell_recipe(recipe, cell), data, reuse)
    shipped, reason = sweep.choose(recipe.sweep, cells, metas, task_spec(data.task))
    log.info(f"sweep: shipping {shipped.name}: {reason}")
    write_json_atomic(out / layout.SWEEP_JSON, sweep.describe(cells, shipped, reason, teacher))
    return shipped.stage


def bench_stage(bundle: Path, out: Path, device: str, recipe: Recipe, reuse: bool) -> StageMeta:
    from edgekit.bench.run import bench_bundles, markdown_table

    config = {"device": device, "runs": recipe.bench.runs, "batch_size": recipe.bench.batch_size}
    stage = Stage("bench", out, config, parent=bundle)
    if (meta := stage.reused(reuse)) is not None:
        return meta
    document = bench_bundles([bundle], device, runs=recipe.bench.runs, batch_sizes=[recipe.bench.batch_size])
    log.info(markdown_table(document))
    result = document["results"][0]
    if "latency_ms" not in result:  # the bundle did not run there: nothing measured, nothing to keep and reuse
        raise EdgekitError(
            f"bench on {device} could not run {bundle}: {result.get('error') or 'no latency measured'}; "
            "fix that and run again (finished stages are reused)"
        )
    with stage.folder(force=True) as folder:
        write_json_atomic(folder / "bench.json", document)
        metrics = {"valid": result["valid"]}
        if "latency_ms" in result:
            metrics.update(
                latency_ms=result["latency_ms"],
                latency_ci95_ms=result.get("latency_ci95_ms"),
                size_mb=result["size_mb"],
                peak_rss_mb=result["peak_rss_mb"],
                energy_mj_per_inference=result.get("energy_mj_per_inference"),
                energy=result.get("energy"),
                generation=result.get("generation"),
            )
        return stage.finish(metrics=metrics)
