"""The distill command: a student from one or more teachers, by a registered strategy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry
from edgekit.cli.common import (
    BatchOpt,
    EpochsOpt,
    LrOpt,
    ResumeOpt,
    _check_out,
    _csv,
    _print_model_summary,
    _train_overrides,
)
from edgekit.cli.options import (
    DatasetOpt,
    ForceOpt,
    ImageSizeOpt,
    LabelColOpt,
    OutOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    TaskOpt,
    TestOpt,
    TextColOpt,
    TrainOpt,
    ValOpt,
    WriteRecipeOpt,
    build_recipe,
    data_overrides,
    write_recipe_file,
)
from edgekit.errors import EdgekitError


def distill(
    teacher: Annotated[
        list[str],
        typer.Option(
            "--teacher",
            help="Teacher: a finetune output folder, or a model already trained on the task. Repeat for --strategy multi-teacher.",
        ),
    ],
    out: OutOpt,
    student: Annotated[
        Optional[str],
        typer.Option(
            "--student", help="Student: torchvision name, Hugging Face id or folder (or use --student-layers)."
        ),
    ] = None,
    student_layers: Annotated[
        Optional[str],
        typer.Option(
            "--student-layers",
            help="Derive the student from a transformer teacher by keeping K of its layers; for --strategy successive the chain, e.g. 6,3,1.",
        ),
    ] = None,
    recipe: RecipeOpt = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help=f"{registry.choices('strategy')}.")] = None,
    temperature: Annotated[
        Optional[float], typer.Option("--temperature", "-T", help="Softmax temperature T (default 4).")
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option("--alpha", help="Weight of the distillation term (default 0.3): (1-alpha)*CE + alpha*T^2*KL."),
    ] = None,
    teacher_weights: Annotated[
        Optional[str],
        typer.Option("--teacher-weights", help="multi-teacher: one weight per teacher (e.g. 0.7,0.3), or 'learned'."),
    ] = None,
    feature_weight: Annotated[
        Optional[float],
        typer.Option(
            "--feature-weight",
            help="Add feature KD (pooled hidden state through a learned projection, MSE) with this weight.",
        ),
    ] = None,
    features: Annotated[
        Optional[str],
        typer.Option(
            "--features",
            help="Intermediate-layer KD, KIND[=WEIGHT],...: "
            + "; ".join(f"{e.name}: {e.summary}" for e in registry.entries("feature-kd"))
            + ". E.g. hidden=1,relation=1 (a weight left out is 1).",
        ),
    ] = None,
    layer_map: Annotated[
        Optional[str],
        typer.Option(
            "--layer-map",
            help="For --features: the teacher layer (1-based) each student layer matches, e.g. 4,8,12 "
            "(default: the layers a derived student kept, else evenly spaced).",
        ),
    ] = None,
    loss: Annotated[
        Optional[str],
        typer.Option(
            "--loss",
            help=f"Logit loss of classifier KD: {'; '.join(f'{e.name}: {e.summary}' for e in registry.entries('loss'))}. "
            "Its options: --set distill.loss_options.NAME=VALUE.",
        ),
    ] = None,
    unlabeled: Annotated[
        Optional[str],
        typer.Option(
            "--unlabeled",
            help="Examples without labels added to the transfer set (the teacher labels them; only the KD term "
            "uses them): a .txt file with one text per line, a CSV/TSV/JSONL file's text column, or a folder of images.",
        ),
    ] = None,
    augment: Annotated[
        Optional[int],
        typer.Option(
            "--augment",
            help="Add N perturbed copies of each labelled training text (words dropped, replaced, swapped) to the "
            "transfer set without labels: the teacher labels them, only the KD term uses them (text classification; "
            "each epoch sees 1+N times the examples).",
            metavar="N",
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline", help="Also train the same student on labels only for the same budget and record it."
        ),
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Recompute teacher logits instead of using the on-disk transfer-set cache."),
    ] = False,
    resume: ResumeOpt = False,
    train: TrainOpt = None,
    val: ValOpt = None,
    test: TestOpt = None,
    dataset: DatasetOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    task: TaskOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    sets: SetOpt = None,
    force: ForceOpt = False,
    write_recipe: WriteRecipeOpt = None,
) -> None:
    """Distil one or more teachers into a smaller student (Hinton KD and its strategies)."""
    from edgekit import stages
    from edgekit.artifacts import is_stage

    first = Path(teacher[0])
    base = recipe
    if base is None and is_stage(first) and (first / "recipe.yaml").is_file() and not (train or dataset):
        base = first / "recipe.yaml"  # the teacher's data, unless new data is given
        _check_teacher_data(base)
    overrides = data_overrides(train, val, test, dataset, text_column, label_column, task, image_size, seed)
    if student is not None:
        overrides.append(f"student.model={json.dumps(student)}")
    if student_layers is not None:
        overrides.append(f"student.layers={json.dumps(_csv(student_layers, int, '--student-layers'))}")
        if student is None:
            overrides.append("student.model=null")
    elif student is None and recipe is None and strategy != "self-quantized":
        raise EdgekitError(
            "say which student to train: --student MODEL, or --student-layers K to keep K of the teacher's layers"
        )
    for key, value in (
        ("strategy", strategy),
        ("temperature", temperature),
        ("alpha", alpha),
        ("feature_weight", feature_weight),
        ("loss", loss),
        ("augment", augment),
    ):
        if value is not None:
            overrides.append(f"distill.{key}={json.dumps(value)}")
    if unlabeled is not None:
        overrides.append(f"data.unlabeled={json.dumps(unlabeled)}")
    if features is not None:
        overrides.append(f"distill.features={json.dumps(_weights(features, '--features'))}")
    if layer_map is not None:
        overrides.append(f"distill.layer_map={json.dumps(_csv(layer_map, int, '--layer-map'))}")
    if teacher_weights is not None:
        if teacher_weights.strip().lower() == "learned":
            overrides.append("distill.learn_teacher_weights=true")
        else:
            overrides.append(f"distill.teacher_weights={json.dumps(_csv(teacher_weights, float, '--teacher-weights'))}")
    if baseline:
        overrides.append("distill.baseline=true")
    if no_cache:
        overrides.append("distill.cache=false")
    overrides.append(f"distill.teachers={json.dumps([str(t) for t in teacher[1:]])}")  # --teacher is the whole list
    overrides += _train_overrides("distill.train", epochs, lr, batch_size)
    loaded = build_recipe(base, overrides, sets)
    _check_out(out, force, resume)
    write_recipe_file(loaded, write_recipe)
    meta = stages.distill(loaded, teacher[0], out, force=force, resume=resume)
    _print_model_summary(meta, out)


def _weights(text: str, flag: str) -> dict[str, float]:
    """``a=1,b=0.5,c`` -> {a: 1.0, b: 0.5, c: 1.0}; one clear line for a weight that is not a number."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        try:
            out[name.strip()] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise EdgekitError(f"{flag} {part!r}: the weight after '=' must be a number, e.g. hidden=1") from None
    if not out:
        raise EdgekitError(f"{flag}: name at least one kind, e.g. {flag} hidden=1")
    return out


def _check_teacher_data(recipe: Path) -> None:
    """The teacher's recipe records its data paths as they were typed, relative to where it was trained:
    from another directory they are missing, and the error should say where they came from."""
    from edgekit.recipe import load_recipe

    data = load_recipe(recipe).data
    for key in ("train", "val", "test", "unlabeled"):
        value = getattr(data, key)
        if isinstance(value, str) and value and not Path(value).exists():
            raise EdgekitError(
                f"the teacher's recipe {recipe} names data.{key} {value}, which does not exist from this "
                "directory; run from where the teacher was trained or give the data with --train/--test"
            )
