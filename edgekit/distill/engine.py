"""``edgekit distill``: every strategy as links of one loop.

    straightforward   teacher ──KD──> student
    successive        teacher ──KD──> link 1 ──KD──> link 2 ... (each link derived from and taught by the one before)
    multi-teacher     Σ β_i · teacher_i ──KD──> student (β fixed or learned)
    self-quantized    teacher ──KD──> NF4(teacher) + LoRA, saved merged in full precision

Teacher outputs come from the transfer-set cache: the labelled training examples, plus any unlabeled
ones (``data.unlabeled``, label -1: the KD term learns from them, the label term does not). With
``baseline`` the same initial student is also trained on labels only (the labelled examples) for the
same budget, so the gain of KD is measured.

The links are trained by :mod:`edgekit.distill.links`; the classification KD objective is built by
:mod:`edgekit.distill.logit`.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.artifacts import is_stage
from edgekit.distill.links import DistillRun
from edgekit.errors import EdgekitError
from edgekit.layout import checkpoint_folder
from edgekit.log import info as log
from edgekit.processes import is_main
from edgekit.records import StageMeta, read_meta
from edgekit.stage_runner import Stage, load_data, task_of
from edgekit.tasks import task_spec


def plan_links(recipe) -> list[dict[str, Any]]:
    """The students to train, in order, or a clear error for settings that do not fit together."""
    cfg, student = recipe.distill, recipe.student
    strategy = registry.get("strategy", cfg.strategy, option="--strategy")
    layers = list(student.layers or [])
    if strategy.can("chain"):
        if not layers:
            raise EdgekitError(
                "the successive strategy needs the chain of student sizes: --student-layers 6,3,1 "
                "(student.layers in a recipe)"
            )
        if any(b >= a for a, b in zip(layers, layers[1:])):
            raise EdgekitError(
                f"--student-layers {','.join(map(str, layers))}: each link of a successive chain must "
                "have fewer layers than the one before"
            )
        return [{"layers": k} for k in layers]
    if len(layers) > 1:
        raise EdgekitError(
            f"--student-layers {','.join(map(str, layers))}: give one size for the {cfg.strategy} "
            "strategy (several sizes make a chain: --strategy successive)"
        )
    if strategy.can("student") == "self":
        if layers:
            raise EdgekitError(
                "the self-quantized strategy distils a model into a 4-bit copy of itself; drop --student-layers"
            )
        return [{"self_quantized": True}]
    if layers:
        return [{"layers": layers[0]}]
    return [{"model": student.model}]


def distill(
    recipe, teachers: list[str], out: Path, *, data=None, force: bool = False, reuse: bool = False, resume: bool = False
) -> StageMeta:
    """Distil ``teachers`` into the recipe's student(s) as one stage folder ``out`` (see the module docstring)."""
    cfg = recipe.distill
    strategy = registry.get("strategy", cfg.strategy, option="--strategy")
    teachers = _check_teachers(cfg, strategy, [teachers] if isinstance(teachers, str) else list(teachers))
    links = plan_links(recipe)
    _check_logit_settings(recipe)
    unlabeled = _unlabeled(recipe)
    teacher_stage = Path(teachers[0]) if is_stage(Path(teachers[0])) else None
    stage = Stage("distill", out, _config(recipe, teachers, strategy, unlabeled), parent=teacher_stage)
    if (meta := stage.reused(reuse)) is not None:
        return meta
    data = data or load_data(recipe)
    transfer = data
    if unlabeled is not None:
        from edgekit.data.unlabeled import with_unlabeled

        transfer = replace(data, train=with_unlabeled(data.train, unlabeled))
        log(
            f"distill: {len(data.train)} labelled + {len(unlabeled)} unlabeled transfer examples ({recipe.data.unlabeled})"
        )
    if cfg.augment:
        from edgekit.data.augment import augmented
        from edgekit.data.unlabeled import with_unlabeled

        copies = augmented(data.train, cfg.augment, recipe.seed)
        transfer = replace(transfer, train=with_unlabeled(transfer.train, copies))
        log(f"distill: + {len(copies)} augmented copies of the labelled texts ({cfg.augment} each, teacher-labelled)")
    run = DistillRun(recipe, cfg, strategy, data, task_spec(data.task), stage, checkpoint_folder(out), resume, transfer)
    handles = run.load_teachers(teachers, links)
    if not resume and run.ckpt_root.exists() and is_main():
        shutil.rmtree(run.ckpt_root)
    with stage.folder(force) as folder:
        meta = run.train_links(folder, links, teachers, handles)
    if is_main():  # (the checkpoints are the main process's, as the folder is)
        shutil.rmtree(run.ckpt_root, ignore_errors=True)
    return meta


def _check_teachers(cfg, strategy, teachers: list[str]) -> list[str]:
    """The teachers (given and ``distill.teachers``), or one clear line for a count or name that cannot work."""
    teachers = teachers + [str(t) for t in cfg.teachers]
    ensemble = strategy.can("teachers") == "many"
    if ensemble and len(teachers) < 2:
        raise EdgekitError(
            f"the {cfg.strategy} strategy needs two or more teachers: repeat --teacher (distill.teachers)"
        )
    if not ensemble and len(teachers) > 1:
        many = ", ".join(registry.names("strategy", teachers="many"))
        raise EdgekitError(f"{len(teachers)} teachers given for the {cfg.strategy} strategy; use --strategy {many}")
    if cfg.teacher_weights is not None and len(cfg.teacher_weights) != len(teachers):
        raise EdgekitError(
            f"--teacher-weights has {len(cfg.teacher_weights)} values for {len(teachers)} teachers; "
            "give one weight per teacher"
        )
    for t in teachers:
        if not Path(t).exists() and "/" not in t and not _is_torchvision(t):
            raise EdgekitError(
                f"teacher {t!r} is not a folder, a torchvision name or a Hugging Face id; check the path"
            )
    return teachers


def _check_logit_settings(recipe) -> None:
    """One clear line, before any work, for classifier-only KD settings (loss, its options, feature KD,
    unlabeled transfer data) on a task that distils token by token (text2text)."""
    cfg, task = recipe.distill, task_of(recipe)
    if not task_spec(task).logit_kd:
        given = [
            what
            for what, on in (
                (f"distill.loss {cfg.loss}", cfg.loss != "hinton"),
                ("distill.loss_options", bool(cfg.loss_options)),
                ("distill.features", bool(cfg.features)),
                ("unlabeled transfer data (--unlabeled)", recipe.data.unlabeled is not None),
                ("augmented transfer data (--augment)", cfg.augment > 0),
            )
            if on
        ]
        if given:
            raise EdgekitError(
                f"{' and '.join(given)}: {task} distillation runs token-level Hinton KD against a teacher run on "
                "each batch; these work for classifiers (drop them here)"
            )
    if cfg.augment and task_spec(task).modality != "text":
        raise EdgekitError(
            f"--augment {cfg.augment}: augmented copies are made of texts, and this is a {task} task; give more "
            "images to the teacher as unlabeled transfer data instead (--unlabeled FOLDER)"
        )


def _unlabeled(recipe):
    """The recipe's unlabeled transfer examples (a split labelled -1), or None."""
    if recipe.data.unlabeled is None:
        return None
    spec = task_spec(task_of(recipe))
    from edgekit.data.unlabeled import load_unlabeled

    return load_unlabeled(recipe.data.unlabeled, recipe.data.text_column, images=spec.modality == "image")


def _config(recipe, teachers: list[str], strategy, unlabeled=None) -> dict[str, Any]:
    """What the stage's fingerprint covers (the unlabeled examples by their content)."""
    cfg = recipe.distill
    extra: dict[str, Any] = {}
    if cfg.loss_options:
        extra["loss_options"] = dict(sorted(cfg.loss_options.items()))
    if cfg.features:
        extra["features"] = {"kinds": dict(sorted(cfg.features.items())), "layer_map": cfg.layer_map}
    if cfg.augment:
        extra["augment"] = cfg.augment
    if unlabeled is not None:
        from edgekit.train.transfer import split_digest

        extra["unlabeled"] = {"examples": len(unlabeled), "sha256": split_digest(unlabeled, task_of(recipe))}
    return {
        "strategy": cfg.strategy,
        "temperature": cfg.temperature,
        "alpha": cfg.alpha,
        "teachers": [str(t) for t in teachers],
        "teacher_weights": cfg.teacher_weights,
        "learn_teacher_weights": cfg.learn_teacher_weights,
        "feature_weight": cfg.feature_weight,
        **({"loss": cfg.loss} if cfg.loss != "hinton" else {}),  # (fingerprints of hinton runs stay as they were)
        "baseline": cfg.baseline,
        "lora": asdict(cfg.lora) if strategy.can("student") == "self" else None,
        "train": asdict(cfg.train),
        "student": asdict(recipe.student),
        "data": asdict(recipe.data),
        "task": recipe.task,
        "seed": recipe.seed,
        "teacher_prints": [read_meta(Path(t)).fingerprint for t in teachers if is_stage(Path(t))],
        **extra,  # (absent when unused: the fingerprints of earlier runs stay as they were)
    }


def _is_torchvision(name: str) -> bool:
    from edgekit.models.handle import is_torchvision_name

    return is_torchvision_name(name)
