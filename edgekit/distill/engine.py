"""``edgekit distill``: every strategy as links of one loop.

    straightforward   teacher ──KD──> student
    successive        teacher ──KD──> link 1 ──KD──> link 2 ... (each link derived from and taught by the one before)
    multi-teacher     Σ β_i · teacher_i ──KD──> student (β fixed or learned)
    self-quantized    teacher ──KD──> NF4(teacher) + LoRA, saved merged in full precision

Teacher outputs come from the transfer-set cache: the labelled training examples, plus any unlabeled
ones (``data.unlabeled``, label -1: the KD term learns from them, the label term does not). With
``baseline`` the same initial student is also trained on labels only (the labelled examples) for the
same budget, so the gain of KD is measured.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.artifacts import RECIPE_FILE, is_stage, stage_folder
from edgekit.errors import EdgekitError
from edgekit.layout import checkpoint_folder
from edgekit.log import info as log
from edgekit.processes import is_main
from edgekit.records import StageMeta, read_meta, write_meta
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
    run = _Run(recipe, cfg, strategy, data, task_spec(data.task), stage, checkpoint_folder(out), resume, transfer)
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
            )
            if on
        ]
        if given:
            raise EdgekitError(
                f"{' and '.join(given)}: {task} distillation runs token-level Hinton KD against a teacher run on "
                "each batch; these work for classifiers (drop them here)"
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


@dataclass
class _Run:
    """One distill stage in progress: what every link shares."""

    recipe: Any
    cfg: Any
    strategy: Any
    data: Any
    spec: Any
    stage: Stage
    ckpt_root: Path
    resume: bool
    transfer: Any  # the data the KD links train on: data, with any unlabeled examples added to train

    @property
    def model_kwargs(self) -> dict[str, Any]:
        d = self.recipe.data
        return dict(
            task=self.data.task,
            label_names=self.data.label_names,
            image_size=d.image_size,
            max_length=d.max_length,
            max_target_length=d.max_target_length,
        )

    def checkpointing(self, name: str, tag: str):
        from edgekit.train.checkpoint import Checkpointing

        return Checkpointing(
            self.ckpt_root / name,
            tag=f"{self.stage.fingerprint}:{tag}",
            every_steps=self.cfg.checkpoint_every,
            resume=self.resume,
        )

    def load_teachers(self, teachers: list[str], links: list[dict]) -> list:
        """The teachers' models, checked against the data and the chain, before any folder is made."""
        from edgekit.models import load_model
        from edgekit.train.loop import seed_everything

        seed_everything(self.recipe.seed)  # the initial weights of students built from scratch
        handles = [load_model(t, **self.model_kwargs) for t in teachers]
        for t, h in zip(teachers, handles):
            if h.task != self.data.task:
                raise EdgekitError(f"teacher {t} does {h.task} but the data is {self.data.task}")
        if "layers" in links[0]:  # a chain that cannot be cut from this teacher fails before any training
            from edgekit.distill.derive import kept_layers, layer_count

            n = layer_count(handles[0])
            for link in links:
                kept_layers(n, link["layers"])
        return handles

    def train_links(self, folder: Path, links: list[dict], teachers: list[str], handles: list) -> StageMeta:
        """Every link in order (each taught by the one before), the last saved in ``folder``."""
        from edgekit.train.evaluate import evaluate

        spec = self.spec
        teacher_metrics = [
            evaluate(h, self.data.eval_split, desc=f"evaluate teacher {i + 1}") for i, h in enumerate(handles)
        ]
        for h in handles:
            h.module.cpu()
        rows: list[dict[str, Any]] = []
        teacher, score, extra, baseline = handles[0], spec.score(teacher_metrics[0]), {}, None
        for index, link in enumerate(links, start=1):
            name, last = _link_name(index, link), index == len(links)
            done = self.ckpt_root / name / "stage"
            if not last and self.resume and is_stage(done):
                teacher = self._reuse_link(done, index, len(links), name, rows)
            else:
                teacher, metrics, result, baseline = self._train_link(
                    folder, link, index, len(links), teacher, handles, score, rows, extra
                )
                if not last:
                    _save_link(
                        done,
                        teacher,
                        self.recipe,
                        self.stage.config,
                        metrics,
                        result,
                        self.stage.fingerprint,
                        index,
                        rows[-1],
                    )
            score = spec.score(rows[-1])
        for row in rows[:-1]:  # the successive chain's earlier links, each a stage folder
            shutil.copytree(self.ckpt_root / row["name"] / "stage", folder / "links" / row["name"])
        student = teacher
        self._against_teacher(metrics, student, handles[0], teacher_metrics[0], baseline)
        student.save(folder)
        (folder / RECIPE_FILE).write_text(self.recipe.to_yaml())
        extra.update(_summary(links, rows, student, result, teachers, handles, teacher_metrics, spec))
        if baseline is not None:
            extra["baseline_metrics"] = baseline
        return self.stage.finish(metrics=metrics, parameters=student.parameter_count(), extra=extra)

    def _reuse_link(self, done: Path, index: int, count: int, name: str, rows: list) -> Any:
        from edgekit.models.load import load_saved

        log(f"distill: link {index}/{count} ({name}) finished before; reusing {done}")
        rows.append(read_meta(done).details["link_row"])
        return load_saved(done, label_names=self.data.label_names)

    def _train_link(self, folder, link, index, count, teacher, handles, score, rows, extra):
        """Build, train and measure one link; returns (student, metrics, train result, baseline metrics)."""
        from edgekit.train.evaluate import model_metrics
        from edgekit.train.loop import copy_handle, train

        cfg, data, name = self.cfg, self.data, _link_name(index, link)
        ensemble, self_copy = self.strategy.can("teachers") == "many", self.strategy.can("student") == "self"
        student = _build_student(link, teacher, self.recipe, self.model_kwargs)
        _check_compatible(teacher, student)
        objective = self.spec.job("kd_objective")(cfg, handles if ensemble else [teacher], student, self.transfer)
        initial = copy_handle(student) if cfg.baseline and index == count and not self_copy else None
        log(
            f"distill [{cfg.strategy}] link {index}/{count}: {_describe(teacher)} -> {_describe(student)}, "
            f"T={cfg.temperature}, alpha={cfg.alpha}"
        )
        result = train(
            student,
            self.transfer,
            cfg.train,
            seed=self.recipe.seed,
            objective=objective,
            desc=f"student {name}",
            checkpoint=self.checkpointing(name, str(index)),
            deterministic=cfg.deterministic,
        )
        if self_copy:
            from edgekit.compress.lora import merge_checked

            student, extra["merge"] = merge_checked(student, teacher, data, folder)
        metrics = model_metrics(student, data)
        metrics.update(result.summary(), teacher_score=score, **result.objective)
        if self.transfer is not data:
            metrics.update(
                transfer_examples=len(self.transfer.train),
                unlabeled_examples=len(self.transfer.train) - len(data.train),
            )
        rows.append(
            {
                "name": name,
                "parameters": student.parameter_count(),
                **self.spec.headline(metrics),
                "teacher_score": score,
                "train_seconds": result.seconds,
                **result.objective,
            }
        )
        baseline = self._baseline(initial, name) if initial is not None else None
        return student, metrics, result, baseline

    def _baseline(self, initial, name: str) -> dict[str, Any]:
        """The same initial student on labels only, for the same budget: what KD gained."""
        from edgekit.train.evaluate import model_metrics
        from edgekit.train.loop import train

        cfg = self.cfg
        log(f"distill: baseline — the same {_describe(initial)} on labels only, {cfg.train.epochs} epochs")
        base = train(
            initial,
            self.data,
            cfg.train,
            seed=self.recipe.seed,
            desc=f"baseline {name}",
            checkpoint=self.checkpointing("baseline", "baseline"),
            deterministic=cfg.deterministic,
        )
        metrics = model_metrics(initial, self.data)
        metrics.update(best_epoch=base.best_epoch, train_seconds=base.seconds, history=base.history)
        return metrics

    def _against_teacher(self, metrics, student, teacher, teacher_metrics, baseline) -> None:
        """The last link's metrics against the original teacher (and the labels-only baseline)."""
        spec = self.spec
        metrics.update(
            teacher_score=spec.score(teacher_metrics),
            compression_ratio=teacher.parameter_count() / student.parameter_count(),
        )
        if baseline is not None:
            gain = spec.score(metrics) - spec.score(baseline)
            if spec.score_key == "accuracy":
                metrics["kd_gain_points"] = 100 * gain
            else:
                metrics[f"kd_gain_{spec.score_key}"] = gain


def _summary(links, rows, student, result, teachers, handles, teacher_metrics, spec) -> dict[str, Any]:
    """meta.json's description of the chain and the teachers."""
    return {
        "student_model": (
            str(links[-1]["model"]) if "model" in links[-1] else f"{student.arch}-{rows[-1]['name'].split('-', 1)[1]}"
        ),
        "history": result.history,
        "resumed_from": result.resumed_from,
        "links": rows,
        "teachers": [
            {"source": str(t), "arch": h.arch, "parameters": h.parameter_count(), **spec.headline(m)}
            for t, h, m in zip(teachers, handles, teacher_metrics)
        ],
        "teacher": {
            "source": str(teachers[0]),
            "arch": handles[0].arch,
            "parameters": handles[0].parameter_count(),
            **spec.headline(teacher_metrics[0]),
        },
    }


def _is_torchvision(name: str) -> bool:
    from edgekit.models.handle import is_torchvision_name

    return is_torchvision_name(name)


def _link_name(index: int, link: dict) -> str:
    if "layers" in link:
        return f"{index}-L{link['layers']}"
    if link.get("self_quantized"):
        return f"{index}-nf4-lora"
    return f"{index}-{Path(str(link['model'])).name}"


def _describe(handle) -> str:
    layers = ""
    config = getattr(handle.module, "config", None)
    if config is not None and isinstance(getattr(config, "num_hidden_layers", None), int):
        layers = f" {config.num_hidden_layers} layers,"
    return f"{handle.arch} ({layers} {handle.parameter_count() / 1e6:.2f} M parameters)".replace("( ", "(")


def _build_student(link: dict, teacher, recipe, kwargs):
    from edgekit.models import load_model

    if "layers" in link:
        from edgekit.distill.derive import derive_student

        return derive_student(teacher, link["layers"])
    if link.get("self_quantized"):
        from edgekit.compress.lora import with_lora

        if teacher.family != "hf":
            raise EdgekitError(
                f"self-quantized distillation needs a Hugging Face model (BERT-like, ViT); {teacher.arch} is "
                "a torchvision model"
            )
        return with_lora(teacher, recipe.distill.lora, quantized=True)
    return load_model(link["model"], pretrained=recipe.student.pretrained, **kwargs)


def _check_compatible(teacher, student) -> None:
    if list(teacher.label_names) != list(student.label_names):
        raise EdgekitError(
            f"teacher labels {teacher.label_names} differ from the student's {student.label_names}; "
            "use models trained on one label set"
        )
    if teacher.task != student.task:
        raise EdgekitError(f"teacher does {teacher.task} but student does {student.task}; use models of one task")


def logit_objective(cfg, teachers, student, data):
    """Classification KD (the task's ``kd_objective`` job): a registered logit loss (Hinton's by
    default) against the cached transfer set of one teacher, or of a weighted ensemble whose learned
    weights are fitted on the validation split first; feature KD on the head input when asked."""
    from edgekit.train.objectives import LogitKD, MultiTeacherKD

    want_features = cfg.feature_weight > 0
    sets = _teacher_tables(cfg, teachers, data.train, features=want_features)
    features = {}
    if want_features:
        width = student.head().in_features
        features = dict(teacher_features=sets[0].features, student_width=width, feature_weight=cfg.feature_weight)
    entry = registry.get("loss", cfg.loss, option="distill.loss")
    options = {**entry.can("options", {}), **cfg.loss_options}
    loss_fn = entry.load()
    features["loss_fn"] = partial(loss_fn, **options) if options else loss_fn
    strategy = registry.get("strategy", cfg.strategy)
    if strategy.can("teachers") == "many":
        weights, fitted = cfg.teacher_weights, None
        if cfg.learn_teacher_weights:
            weights, fitted = _fit_weights(cfg, teachers, data.val)
        objective = MultiTeacherKD(
            [s.logits for s in sets], weights, cfg.temperature, cfg.alpha, fitted=fitted, **features
        )
    else:
        objective = LogitKD(sets[0].logits, cfg.temperature, cfg.alpha, **features)
    if not cfg.features:
        return objective
    if strategy.can("student") == "self":
        raise EdgekitError(
            f"distill.features: the {cfg.strategy} strategy trains LoRA adapters on the teacher's own layers; "
            f"intermediate-layer KD works with the {', '.join(registry.names('strategy', student='model'))} strategies"
        )
    from edgekit.distill.features import IntermediateKD

    return IntermediateKD(objective, teachers[0], student, cfg.features, cfg.layer_map, cfg.feature_cache_mb)


def _teacher_tables(cfg, teachers, split, *, features: bool = False, what: str = "logits"):
    """Each teacher's transfer set on ``split`` (the first teacher's features too when asked)."""
    from edgekit.train.transfer import transfer_set

    sets = []
    for i, t in enumerate(teachers):
        s = transfer_set(
            t,
            split,
            features=features and i == 0,
            cache=cfg.cache,
            desc=f"teacher {i + 1} {what}" if len(teachers) > 1 else f"teacher {what}",
        )
        log(
            f"  transfer set ({split.name}): {len(split)} examples, {'cache hit' if s.hit else 'computed'} "
            f"in {s.seconds:.1f} s" + (f" ({s.path})" if s.path else "")
        )
        sets.append(s)
    return sets


def _fit_weights(cfg, teachers, val):
    """Learned ensemble weights: fitted on the validation split, held out from the teachers' training,
    where their errors and disagreements show (on training examples every teacher is right)."""
    from edgekit.train.objectives import fit_teacher_weights

    sets = _teacher_tables(cfg, teachers, val, what="validation logits")
    weights, fitted = fit_teacher_weights([s.logits for s in sets], val.labels, f"{val.name} split")
    log(
        "  teacher weights fitted on the validation split: "
        + ", ".join(f"{w:.3f}" for w in weights)
        + f" (teacher accuracy {', '.join(f'{a:.1%}' for a in fitted['teacher_accuracy'])}; "
        f"{fitted['disagreements']} of {fitted['examples']} examples disputed)"
    )
    return weights, fitted


def _save_link(done: Path, student, recipe, config, metrics, result, print_, index, row) -> None:
    done.parent.mkdir(parents=True, exist_ok=True)
    with stage_folder(done, force=True) as folder:
        student.save(folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        write_meta(
            folder,
            stage="distill-link",
            config={**config, "link": index},
            metrics=metrics,
            parameters=student.parameter_count(),
            fingerprint_value=f"{print_}:{index}",
            extra={"history": result.history, "link_row": row},
        )
