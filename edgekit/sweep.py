"""Strategies x student sizes in one run (``sweep:`` in a recipe): the seeds' Table II.

    RUN/sweep/<strategy>-<student>/student    the distilled student (a distill stage)
                                   export/ eval/ bench-<device>/   its bundle, measured like the shipped one
    RUN/sweep.json                            the plan, each cell's folder and teachers, and the shipped cell

Every cell is a plain ``edgekit distill`` stage with its own fingerprint, so an unchanged cell is
reused and adding a strategy or a size trains only the new cells.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.errors import EdgekitError
from edgekit.layout import STUDENT, sweep_root
from edgekit.recipe import Recipe, SweepConfig, student_label, sweep_cell
from edgekit.records import StageMeta

LINK = "successive"  # the chain's links before the students are named successive-L<k> (they are its first cells)


@dataclass
class Cell:
    name: str
    strategy: str  # labels-only, straightforward, successive, multi-teacher; "link" for a chain-only link
    student: str
    folder: Path  # holds student/ (and export/, eval/, bench-*/ for table cells)
    teachers: list[str] = field(default_factory=list)  # "teacher" or other cells' names
    in_table: bool = True

    @property
    def stage(self) -> Path:
        return self.folder / STUDENT


def teacher_layers(model: str) -> int | None:
    """How many layers the teacher has, from its config alone (no weights); None when it cannot be
    read without a download that fails, or for CNNs."""
    from edgekit.distill.derive import LAYER_COUNT_KEYS as LAYER_KEYS

    folder = Path(model)
    for candidate in (folder / "config.json", folder / "model" / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text())
            return next((int(config[k]) for k in LAYER_KEYS if isinstance(config.get(k), int)), None)
    if folder.exists() or "/" not in model:
        return None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model)
    except Exception:  # offline, or not a transformers model: checked again once the teacher is loaded
        return None
    return next((int(getattr(config, k)) for k in LAYER_KEYS if isinstance(getattr(config, k, None), int)), None)


def chain(sweep: SweepConfig, n_teacher: int | None) -> tuple[list[str], list[str]]:
    """(via links, successive chain of students) — the chain from largest to smallest."""
    derived = all(s.isdigit() for s in sweep.students)
    students = sorted(sweep.students, key=int, reverse=True) if derived else list(sweep.students)
    if sweep.successive_via is not None:
        return list(sweep.successive_via), students
    if derived and n_teacher:
        largest = int(students[0])
        middle = (n_teacher + largest) // 2
        if largest < middle < n_teacher:
            return [str(middle)], students
    return [], students


def check(recipe: Recipe, n_teacher: int | None, cnn_teacher: bool) -> None:
    """Sweep settings that cannot work, before any training."""
    sweep = recipe.sweep
    derived = [s for s in sweep.students + (sweep.successive_via or []) if s.isdigit()]
    if derived and len(derived) != len(sweep.students) + len(sweep.successive_via or []):
        raise EdgekitError(
            "recipe field sweep.students: mix of layer counts and model names; a sweep derives all "
            "students from the teacher (numbers) or trains named models, not both"
        )
    if derived and cnn_teacher:
        raise EdgekitError(
            f"recipe field sweep.students: layer counts derive students from a transformer teacher, but "
            f"{recipe.teacher.model} is a CNN; name student models instead, e.g. [mobilenet_v2]"
        )
    if derived and n_teacher:
        too_big = [k for k in derived if int(k) >= n_teacher]
        if too_big:
            raise EdgekitError(
                f"recipe field sweep.students: {', '.join(too_big)} layers is not smaller than the "
                f"teacher's {n_teacher}; choose 1 to {n_teacher - 1}"
            )
    via, students = chain(sweep, n_teacher)
    if via and derived and any(int(v) <= int(students[0]) for v in via):
        raise EdgekitError(
            "recipe field sweep.successive_via: the links before the students must be larger than "
            f"the largest student ({students[0]} layers)"
        )
    if any(_taught_by(s) == "ensemble" for s in sweep.strategies):
        extra = recipe.distill.teachers or via
        if not extra and (not derived or n_teacher):
            raise EdgekitError(
                "recipe field sweep.strategies: multi-teacher needs a second teacher; set "
                "distill.teachers, or sweep.successive_via (a link the chain trains first)"
            )
        n = 1 + (len(recipe.distill.teachers) or 1)
        weights = recipe.distill.teacher_weights
        if weights is not None and len(weights) != n:
            raise EdgekitError(
                f"recipe field distill.teacher_weights: {len(weights)} values for the {n} teachers of "
                "the multi-teacher cells (the teacher and the second teacher)"
            )


def plan(recipe: Recipe, out: Path, n_teacher: int | None) -> list[Cell]:
    """The cells in training order: labels-only, straightforward, the successive chain, multi-teacher."""
    sweep = recipe.sweep
    root = sweep_root(out)
    via, students = chain(sweep, n_teacher)
    cells: list[Cell] = []

    def add(strategy: str, student: str, teachers: list[str], in_table: bool = True) -> Cell:
        name = sweep_cell(strategy if in_table else LINK, student)
        cell = Cell(name, strategy, student, root / name, teachers, in_table)
        cells.append(cell)
        return cell

    previous, linked = "teacher", False
    for strategy in (s for s in registry.names("sweep-strategy") if s in sweep.strategies):  # registry order
        taught_by = _taught_by(strategy)
        if not linked and (taught_by == "chain" or (taught_by == "ensemble" and not recipe.distill.teachers)):
            for v in via:  # the chain's links before the students, trained once for every cell that needs them
                previous = add("link", v, [previous], in_table=False).name
            linked = True
        if taught_by == "teacher":
            for s in students:
                add(strategy, s, ["teacher"])
        elif taught_by == "chain":
            for s in students:
                previous = add(strategy, s, [previous]).name
        else:
            second = _second_teacher(recipe, via, n_teacher, strategy)
            for s in students:
                add(strategy, s, ["teacher", *second])
    return cells


def _taught_by(strategy: str) -> str:
    return registry.get("sweep-strategy", strategy).can("taught_by")


def _second_teacher(recipe: Recipe, via: list[str], n_teacher: int | None, strategy: str) -> list[str]:
    if recipe.distill.teachers:
        return list(recipe.distill.teachers)
    if via:
        return [sweep_cell(LINK, via[0])]
    raise EdgekitError(
        f"the teacher has {n_teacher} layers: no room for a link between it and the largest "
        f"student, so {strategy} has no second teacher; set distill.teachers or sweep.successive_via"
    )


def cell_recipe(recipe: Recipe, cell: Cell) -> Recipe:
    """The recipe of one cell: a plain straightforward / multi-teacher distillation, no sweep."""
    r = copy.deepcopy(recipe)
    r.sweep = SweepConfig()
    d = r.distill
    d.baseline = False  # the labels-only column is the baseline
    d.teachers = []
    entry = registry.get("sweep-strategy", cell.strategy) if cell.in_table else None  # links: straightforward
    d.strategy = entry.can("distill_as") if entry else "straightforward"
    if registry.get("strategy", d.strategy).can("teachers") != "many":
        d.teacher_weights, d.learn_teacher_weights = None, False
    if entry and entry.can("labels_only"):
        d.alpha = 0.0  # (1 - alpha) * CE on labels only: the same student and budget, no teacher signal
    if cell.student.isdigit():
        r.student.model, r.student.layers = None, [int(cell.student)]
    else:
        r.student.model, r.student.layers = cell.student, None
    return r


def resolve_teacher(name: str, cells: dict[str, Cell], teacher: str) -> str:
    if name == "teacher":
        return teacher
    if name in cells:
        return str(cells[name].stage)
    return name  # distill.teachers: a folder, a torchvision name or a Hugging Face id


def choose(sweep: SweepConfig, cells: list[Cell], metas: dict[str, StageMeta], spec) -> tuple[Cell, str]:
    """The cell to ship and why (``spec``: the task's, whose validation score ranks the cells)."""
    key = spec.validation_key

    def score(meta: StageMeta) -> float:
        return float(meta.metrics.get(key, 0.0))

    table = [c for c in cells if c.in_table]
    if sweep.ship != "best":
        cell = next(c for c in table if c.name == sweep.ship)
        return cell, f"named by sweep.ship ({cell.name})"
    best = max(table, key=lambda c: (score(metas[c.name]), -(metas[c.name].parameters or 0)))
    value = score(metas[best.name])
    shown = f"{value:.2%}" if spec.score_key == "accuracy" else f"{value:.2f}"
    return best, f"highest validation score ({key} {shown}; the smaller student on a tie)"


def describe(cells: list[Cell], shipped: Cell, reason: str, teacher: str) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "teacher": teacher,
        "cells": [
            {
                "name": c.name,
                "strategy": c.strategy,
                "student": c.student,
                "label": student_label(c.student),
                "folder": str(c.folder.name),
                "teachers": c.teachers,
                "in_table": c.in_table,
            }
            for c in cells
        ],
        "shipped": shipped.name,
        "reason": reason,
    }
