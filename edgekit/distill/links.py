"""The links of a distill stage, trained in order by one ``DistillRun``: each student built (kept layers, a
model, or a 4-bit LoRA copy of the teacher), trained against its teacher (and a labels-only baseline
when asked), measured, and saved as a link stage so a resumed chain skips what finished."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.artifacts import RECIPE_FILE, is_stage, stage_folder
from edgekit.errors import EdgekitError
from edgekit.log import info as log
from edgekit.records import StageMeta, read_meta, write_meta
from edgekit.stage_runner import Stage


@dataclass
class DistillRun:
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
