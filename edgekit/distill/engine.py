"""``edgekit distill``: every strategy as links of one loop.

    straightforward   teacher ──KD──> student
    successive        teacher ──KD──> link 1 ──KD──> link 2 ... (each link derived from and taught by the one before)
    multi-teacher     Σ β_i · teacher_i ──KD──> student (β fixed or learned)
    self-quantized    teacher ──KD──> NF4(teacher) + LoRA, saved merged in full precision

Teacher outputs come from the transfer-set cache. With ``baseline`` the same initial student is
also trained on labels only for the same budget, so the gain of KD is measured.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edgekit.artifacts import RECIPE_FILE, is_stage, read_meta, stage_folder, write_meta
from edgekit.errors import EdgekitError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def checkpoint_folder(out: Path) -> Path:
    """Checkpoints of an unfinished run of ``out`` live beside it, until the stage is written."""
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


def plan_links(recipe) -> list[dict[str, Any]]:
    """The students to train, in order, or a clear error for settings that do not fit together."""
    cfg, student = recipe.distill, recipe.student
    layers = list(student.layers or [])
    if cfg.strategy == "successive":
        if not layers:
            raise EdgekitError("the successive strategy needs the chain of student sizes: --student-layers 6,3,1 "
                               "(student.layers in a recipe)")
        if any(b >= a for a, b in zip(layers, layers[1:])):
            raise EdgekitError(f"--student-layers {','.join(map(str, layers))}: each link of a successive chain must "
                               "have fewer layers than the one before")
        return [{"layers": k} for k in layers]
    if len(layers) > 1:
        raise EdgekitError(f"--student-layers {','.join(map(str, layers))}: give one size for the {cfg.strategy} "
                           "strategy (several sizes make a chain: --strategy successive)")
    if cfg.strategy == "self-quantized":
        if layers:
            raise EdgekitError("the self-quantized strategy distils a model into a 4-bit copy of itself; drop --student-layers")
        return [{"self_quantized": True}]
    if layers:
        return [{"layers": layers[0]}]
    return [{"model": student.model}]


def distill(recipe, teachers: list[str], out: Path, *, data=None, force: bool = False, reuse: bool = False,
            resume: bool = False, stage_fingerprint=None, load_data=None) -> dict:
    from edgekit.distill.trainer import Checkpointing, copy_handle, evaluate, train
    from edgekit.models import load_model
    from edgekit.stages import model_metrics

    cfg = recipe.distill
    teachers = [teachers] if isinstance(teachers, str) else list(teachers)
    teachers = teachers + [str(t) for t in cfg.teachers]
    if cfg.strategy == "multi-teacher" and len(teachers) < 2:
        raise EdgekitError("the multi-teacher strategy needs two or more teachers: repeat --teacher (distill.teachers)")
    if cfg.strategy != "multi-teacher" and len(teachers) > 1:
        raise EdgekitError(f"{len(teachers)} teachers given for the {cfg.strategy} strategy; use --strategy multi-teacher")
    if cfg.teacher_weights is not None and len(cfg.teacher_weights) != len(teachers):
        raise EdgekitError(f"--teacher-weights has {len(cfg.teacher_weights)} values for {len(teachers)} teachers; "
                           "give one weight per teacher")
    links = plan_links(recipe)
    for t in teachers:
        if not Path(t).exists() and "/" not in t and not _is_torchvision(t):
            raise EdgekitError(f"teacher {t!r} is not a folder, a torchvision name or a Hugging Face id; check the path")

    teacher_stage = Path(teachers[0]) if is_stage(Path(teachers[0])) else None
    config = {"strategy": cfg.strategy, "temperature": cfg.temperature, "alpha": cfg.alpha,
              "teachers": [str(t) for t in teachers], "teacher_weights": cfg.teacher_weights,
              "learn_teacher_weights": cfg.learn_teacher_weights, "feature_weight": cfg.feature_weight,
              "baseline": cfg.baseline, "lora": asdict(cfg.lora) if cfg.strategy == "self-quantized" else None,
              "train": asdict(cfg.train), "student": asdict(recipe.student), "data": asdict(recipe.data),
              "task": recipe.task, "seed": recipe.seed,
              "teacher_prints": [read_meta(Path(t)).get("fingerprint") for t in teachers if is_stage(Path(t))]}
    print_ = stage_fingerprint("distill", config, teacher_stage)
    if reuse and is_stage(out) and read_meta(out).get("fingerprint") == print_:
        log(f"distill: reused {out}")
        return read_meta(out)
    data = data or load_data(recipe)
    kwargs = dict(task=data.task, label_names=data.label_names, image_size=recipe.data.image_size,
                  max_length=recipe.data.max_length, max_target_length=recipe.data.max_target_length)
    from edgekit.distill.trainer import seed_everything

    seed_everything(recipe.seed)  # the initial weights of students built from scratch
    teacher_handles = [load_model(t, **kwargs) for t in teachers]
    for t, h in zip(teachers, teacher_handles):
        if h.task != data.task:
            raise EdgekitError(f"teacher {t} does {h.task} but the data is {data.task}")
    if "layers" in links[0]:  # a chain that cannot be cut from this teacher fails before any training
        from edgekit.distill.derive import kept_layers, layer_count

        n = layer_count(teacher_handles[0])
        for link in links:
            kept_layers(n, link["layers"])
    ckpt_root = checkpoint_folder(out)
    if not resume and ckpt_root.exists():
        shutil.rmtree(ckpt_root)

    with stage_folder(out, force) as folder:
        teacher = teacher_handles[0]
        teacher_metrics = [evaluate(h, data.eval_split, desc=f"evaluate teacher {i + 1}") for i, h in enumerate(teacher_handles)]
        for h in teacher_handles:
            h.module.cpu()
        link_rows: list[dict[str, Any]] = []
        previous_score = score(teacher_metrics[0])  # the score of the current link's teacher
        student = result = objective = metrics = None
        baseline_metrics = None
        extra: dict[str, Any] = {}
        for index, link in enumerate(links, start=1):
            last = index == len(links)
            name = _link_name(index, link)
            link_ckpt = ckpt_root / name
            done = link_ckpt / "stage"
            if not last and resume and is_stage(done):
                from edgekit.models.handle import load_saved

                log(f"distill: link {index}/{len(links)} ({name}) finished before; reusing {done}")
                student = load_saved(done, label_names=data.label_names)
                link_rows.append(read_meta(done)["link_row"])
                previous_score = score(link_rows[-1])
                teacher = student
                continue
            student = _build_student(link, teacher, recipe, kwargs)
            _check_compatible(teacher, student)
            objective = _objective(cfg, teacher_handles if cfg.strategy == "multi-teacher" else [teacher], student, data)
            initial = copy_handle(student) if cfg.baseline and last and cfg.strategy != "self-quantized" else None
            log(f"distill [{cfg.strategy}] link {index}/{len(links)}: {_describe(teacher)} -> {_describe(student)}, "
                f"T={cfg.temperature}, alpha={cfg.alpha}")
            result = train(student, data, cfg.train, seed=recipe.seed, objective=objective, desc=f"student {name}",
                           checkpoint=Checkpointing(link_ckpt, tag=f"{print_}:{index}", every_steps=cfg.checkpoint_every,
                                                    resume=resume), deterministic=cfg.deterministic)
            if cfg.strategy == "self-quantized":
                from edgekit.compress.lora import merge_checked

                student, extra["merge"] = merge_checked(student, teacher, data, folder)
            metrics = model_metrics(student, data)
            metrics.update(best_epoch=result.best_epoch, train_seconds=result.seconds, lr=result.lr,
                           teacher_score=previous_score, **result.objective)
            link_rows.append({"name": name, "parameters": student.parameter_count(), **headline(metrics),
                              "teacher_score": previous_score, "train_seconds": result.seconds,
                              **result.objective})
            previous_score = score(metrics)
            if not last:
                _save_link(done, student, recipe, config, metrics, result, print_, index, link_rows[-1])
            if initial is not None:
                log(f"distill: baseline — the same {_describe(initial)} on labels only, {cfg.train.epochs} epochs")
                base = train(initial, data, cfg.train, seed=recipe.seed, desc=f"baseline {name}",
                             checkpoint=Checkpointing(ckpt_root / "baseline", tag=f"{print_}:baseline",
                                                      every_steps=cfg.checkpoint_every, resume=resume),
                             deterministic=cfg.deterministic)
                baseline_metrics = model_metrics(initial, data)
                baseline_metrics.update(best_epoch=base.best_epoch, train_seconds=base.seconds, history=base.history)
            teacher = student
        for row in link_rows[:-1]:  # the successive chain's earlier links, each a stage folder
            shutil.copytree(ckpt_root / row["name"] / "stage", folder / "links" / row["name"])
        # the last link's metrics, against the original teacher
        metrics.update(teacher_score=score(teacher_metrics[0]),
                       compression_ratio=teacher_handles[0].parameter_count() / student.parameter_count())
        if baseline_metrics is not None:
            if "accuracy" in metrics:
                metrics["kd_gain_points"] = 100 * (metrics["accuracy"] - baseline_metrics["accuracy"])
            else:
                metrics["kd_gain_bleu"] = metrics["bleu"] - baseline_metrics["bleu"]
        student.save(folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        extra.update({
            "student_model": (str(links[-1]["model"]) if "model" in links[-1]
                              else f"{student.arch}-{link_rows[-1]['name'].split('-', 1)[1]}"),
            "history": result.history, "resumed_from": result.resumed_from, "links": link_rows,
            "teachers": [{"source": str(t), "arch": h.arch, "parameters": h.parameter_count(),
                          **headline(m)} for t, h, m in zip(teachers, teacher_handles, teacher_metrics)],
            "teacher": {"source": str(teachers[0]), "arch": teacher_handles[0].arch,
                        "parameters": teacher_handles[0].parameter_count(), **headline(teacher_metrics[0])},
        })
        if baseline_metrics is not None:
            extra["baseline_metrics"] = baseline_metrics
        meta = write_meta(folder, stage="distill", config=config, parent=teacher_stage, metrics=metrics,
                          parameters=student.parameter_count(), fingerprint_value=print_, extra=extra)
    shutil.rmtree(ckpt_root, ignore_errors=True)
    return meta


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
            raise EdgekitError(f"self-quantized distillation needs a Hugging Face model (BERT-like, ViT); {teacher.arch} is "
                               "a torchvision model")
        return with_lora(teacher, recipe.distill.lora, quantized=True)
    return load_model(link["model"], pretrained=recipe.student.pretrained, **kwargs)


def _check_compatible(teacher, student) -> None:
    if list(teacher.label_names) != list(student.label_names):
        raise EdgekitError(f"teacher labels {teacher.label_names} differ from the student's {student.label_names}; "
                           "use models trained on one label set")
    if teacher.task != student.task:
        raise EdgekitError(f"teacher does {teacher.task} but student does {student.task}; use models of one task")


def _objective(cfg, teachers, student, data):
    from edgekit.distill.objectives import LogitKD, MultiTeacherKD
    from edgekit.distill.transfer import transfer_set

    if data.task == "text2text":
        from edgekit.distill.seq2seq import Seq2SeqKD, check_vocabularies

        if cfg.strategy not in ("straightforward", "successive") or cfg.feature_weight > 0:
            raise EdgekitError(f"text2text distillation supports the straightforward and successive strategies without "
                               f"feature KD; {cfg.strategy}{' with --feature-weight' if cfg.feature_weight else ''} is for classifiers")
        check_vocabularies(teachers[0], student)
        return Seq2SeqKD(teachers[0].module, cfg.temperature, cfg.alpha)

    want_features = cfg.feature_weight > 0
    sets = [transfer_set(t, data.train, features=want_features and i == 0, cache=cfg.cache,
                         desc=f"teacher {i + 1} logits" if len(teachers) > 1 else "teacher logits")
            for i, t in enumerate(teachers)]
    for t, s in zip(teachers, sets):
        log(f"  transfer set: {len(data.train)} examples, {'cache hit' if s.hit else 'computed'} in {s.seconds:.1f} s"
            + (f" ({s.path})" if s.path else ""))
    features = {}
    if want_features:
        width = student.head().in_features
        features = dict(teacher_features=sets[0].features, student_width=width, feature_weight=cfg.feature_weight)
    if cfg.strategy == "multi-teacher":
        return MultiTeacherKD([s.logits for s in sets], cfg.teacher_weights, cfg.learn_teacher_weights,
                              cfg.temperature, cfg.alpha, **features)
    return LogitKD(sets[0].logits, cfg.temperature, cfg.alpha, **features)


def score(metrics: dict) -> float:
    """The headline number: accuracy, or BLEU for text2text."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics["bleu"]


def headline(metrics: dict) -> dict:
    keys = ("accuracy", "macro_f1") if "accuracy" in metrics else ("bleu", "rouge_l")
    return {k: metrics[k] for k in keys}


def _save_link(done: Path, student, recipe, config, metrics, result, print_, index, row) -> None:
    done.parent.mkdir(parents=True, exist_ok=True)
    with stage_folder(done, force=True) as folder:
        student.save(folder)
        (folder / RECIPE_FILE).write_text(recipe.to_yaml())
        write_meta(folder, stage="distill-link", config={**config, "link": index}, metrics=metrics,
                   parameters=student.parameter_count(), fingerprint_value=f"{print_}:{index}",
                   extra={"history": result.history, "link_row": row})
