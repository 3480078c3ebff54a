"""``edgekit run``: chain the stages of a recipe in one run folder.

    RUN/recipe.yaml  teacher/  student/  [lora/]  [pruned/]  export/  eval/  bench-<device>/  report.md report.json *.png

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

from edgekit import stages
from edgekit.artifacts import is_stage, read_meta, stage_folder, write_json_atomic, write_meta, write_text_atomic
from edgekit.errors import EdgekitError
from edgekit.recipe import Recipe


def preflight(recipe: Recipe) -> int | None:
    """Everything that can be checked before training: task, devices, providers, preset, prune method,
    sweep. Returns the teacher's layer count when its config says it (None for CNNs or when unknown)."""
    from edgekit.bench.profiles import check_providers, load_profile
    from edgekit.export.presets import load_preset

    stages.task_of(recipe)
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
    """heads/ffn need a transformer student, channels a CNN: say so before any training."""
    method = recipe.prune.method
    if method not in ("heads", "ffn", "channels"):
        return
    from edgekit.models.handle import is_torchvision_name

    if recipe.sweep.active:  # None: derived from the teacher by keeping layers (a transformer)
        students = [None if s.isdigit() else s for s in recipe.sweep.students]
    else:
        students = [None if recipe.student.layers else recipe.student.model]
    for student in students:
        if student is None:
            if method == "channels":
                raise EdgekitError("recipe field prune.method: channels prunes CNNs, but the students are derived "
                                   "transformers (layer counts); use heads, ffn or l1-unstructured")
            continue
        cnn = is_torchvision_name(student)
        if method in ("heads", "ffn") and cnn:
            raise EdgekitError(f"recipe field prune.method: {method} prunes transformers, but the student {student} "
                               "is a CNN; use channels or l1-unstructured")
        if method == "channels" and not cnn:
            raise EdgekitError(f"recipe field prune.method: channels prunes CNNs, but the student {student} is "
                               "not a torchvision CNN; use heads, ffn or l1-unstructured")


def run(recipe: Recipe, out: Path, fresh: bool = False) -> dict[str, Any]:
    n_teacher = preflight(recipe)
    data = stages.load_data(recipe)  # a missing or empty dataset fails here, before any folder is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"--out {out} is a file; choose a folder")
    if out.exists() and any(out.iterdir()) and not (out / "recipe.yaml").is_file():
        raise EdgekitError(f"--out {out} exists and is not an edgekit run folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from edgekit.artifacts import lock_output

    lock_output(out)  # one `edgekit run` per run folder
    write_text_atomic(out / "recipe.yaml", recipe.to_yaml())
    reuse = not fresh

    teacher: str = recipe.teacher.model
    if recipe.teacher.train is not None:
        stages.finetune(recipe, out / "teacher", force=True, data=data, reuse=reuse)
        teacher = str(out / "teacher")
    if recipe.sweep.active:
        model = run_sweep(recipe, teacher, out, data, reuse, n_teacher)
    else:
        stages.distill(recipe, teacher, out / "student", force=True, data=data, reuse=reuse)
        model = out / "student"
    if recipe.lora.active:
        stages.finetune(recipe, out / "lora", force=True, data=data, reuse=reuse, model=str(model), lora=recipe.lora)
        model = out / "lora"
    if recipe.prune.method:
        from edgekit.compress.prune import prune_stage

        p = recipe.prune
        prune_stage(model, out / "pruned", method=p.method, amount=p.amount, recover_epochs=p.recover_epochs,
                    recover=p.recover, calib_samples=p.calib_samples, recipe=recipe, force=True, reuse=reuse)
        model = out / "pruned"
    ship(model, out, recipe, data, reuse)
    from edgekit.report import write_report

    return write_report([out], out)


def ship(model: Path, out: Path, recipe: Recipe, data, reuse: bool) -> None:
    """export/ -> eval/ (the exported file on its runtime) -> bench-<device>/ for every device, in ``out``."""
    stages.export(str(model), out / "export", preset_name=recipe.export.preset, precision=recipe.export.resolved_precision,
                  fmt=recipe.export.format, mode=recipe.export.mode,
                  recipe=recipe, calib_samples=recipe.export.calib_samples, min_agreement=recipe.export.min_agreement,
                  force=True, reuse=reuse)
    eval_config = {"bundle": "export", "split": data.eval_split.name, "data": recipe.to_dict()["data"]}
    eval_print = stages.stage_fingerprint("eval", eval_config, out / "export")
    if not (reuse and stages.reusable(out / "eval", eval_print)):
        stages.evaluate_bundle(out / "export", data.eval_split, out / "eval", force=True, config=eval_config)
    if data.task == "text2text":
        stages.log("bench: skipped for an encoder-decoder bundle (the latency of generate() depends on the output "
                   "length; the eval stage has BLEU/ROUGE-L of the exported file)")
        return
    for device in recipe.bench.devices:
        bench_stage(out / "export", out / f"bench-{Path(device).stem}", device, recipe, reuse)


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
        stages.log(f"sweep {i}/{len(cells)}: {cell.name} ({cell.strategy}, taught by {', '.join(cell.teachers)})")
        stages.distill(sweep.cell_recipe(recipe, cell), teachers if len(teachers) > 1 else teachers[0], cell.stage,
                       force=True, data=data, reuse=reuse)
    metas = {c.name: read_meta(c.stage) for c in cells}
    for cell in cells:
        if cell.in_table:
            ship(cell.stage, cell.folder, sweep.cell_recipe(recipe, cell), data, reuse)
    shipped, reason = sweep.choose(recipe.sweep, cells, metas)
    stages.log(f"sweep: shipping {shipped.name}: {reason}")
    write_json_atomic(out / "sweep.json", sweep.describe(cells, shipped, reason, teacher))
    return shipped.stage


def bench_stage(bundle: Path, out: Path, device: str, recipe: Recipe, reuse: bool) -> dict[str, Any]:
    from edgekit.bench.run import bench_bundles, markdown_table

    config = {"device": device, "runs": recipe.bench.runs, "batch_size": recipe.bench.batch_size}
    print_ = stages.stage_fingerprint("bench", config, bundle)
    if reuse and stages.reusable(out, print_):
        stages.log(f"bench: {device} reused from {out}")
        return read_meta(out)
    document = bench_bundles([bundle], device, runs=recipe.bench.runs, batch_sizes=[recipe.bench.batch_size])
    stages.log(markdown_table(document))
    result = document["results"][0]
    with stage_folder(out, force=True) as folder:
        write_json_atomic(folder / "bench.json", document)
        metrics = {"valid": result["valid"]}
        if "latency_ms" in result:
            metrics.update(latency_ms=result["latency_ms"], size_mb=result["size_mb"], peak_rss_mb=result["peak_rss_mb"])
        return write_meta(folder, stage="bench", config=config, parent=bundle, metrics=metrics, fingerprint_value=print_)


def find_stages(run_dir: Path) -> dict[str, Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgekitError(f"run folder {run_dir} does not exist; pass a folder written by 'edgekit run'")
    found = {p.name: p for p in sorted(run_dir.iterdir()) if p.is_dir() and is_stage(p)}
    if not found:
        raise EdgekitError(f"{run_dir} holds no stage folders; pass a folder written by 'edgekit run'")
    return found
