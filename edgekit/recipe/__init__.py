"""The recipe: one YAML file that says what to train, compress, export and measure.

Every section is a small dataclass validated on load. Errors name the field by its
dotted path and list the allowed values, e.g.
``recipe field distill.strategy: 'fast' is not one of straightforward, ...``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgekit import registry
from edgekit.recipe.fields import (
    SEED_MAX,
    RecipeError,
    apply_overrides,
    check_choice,
    check_range,
    from_dict,
    parse_override,
    shown,
    validate_tree,
)
from edgekit.recipe.sections import (
    BenchConfig,
    DataConfig,
    DistillConfig,
    ExportConfig,
    LoraConfig,
    LoraStageConfig,
    PruneConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    TrainConfig,
    student_label,
    sweep_cell,
)

__all__ = [
    "BenchConfig",
    "DataConfig",
    "DistillConfig",
    "ExportConfig",
    "LoraConfig",
    "LoraStageConfig",
    "PruneConfig",
    "Recipe",
    "RecipeError",
    "StudentConfig",
    "SweepConfig",
    "TeacherConfig",
    "TrainConfig",
    "apply_overrides",
    "from_dict",
    "infer_task",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "shown",
    "student_label",
    "sweep_cell",
]


@dataclass
class Recipe:
    name: str = "edgekit"
    task: str | None = None
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lora: LoraStageConfig = field(default_factory=LoraStageConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    def validate(self, path: str = "") -> None:
        if not self.name or "/" in self.name:
            raise RecipeError("recipe field name: must be a non-empty name without '/'")
        if self.task is not None:
            check_choice("task", self.task, "task")
        check_range("seed", self.seed, 0, SEED_MAX)
        needs_student = not self.sweep.active and self.distill.strategy not in registry.names(
            "strategy", student="self"
        )
        if needs_student and not self.student.model and not self.student.layers:
            raise RecipeError("recipe field student.model: name a student model, or set student.layers")
        for section in ("data", "teacher", "student", "distill", "lora", "prune", "export", "bench", "sweep"):
            value = getattr(self, section)
            if section == "distill" and self.sweep.active:  # the sweep sets the strategy of each cell
                value = dataclasses.replace(value, strategy=registry.names("strategy", teachers="many")[0])
            validate_tree(value, section)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe file (or the embedded default when ``path`` is None)."""
    if path is None:
        from edgekit.resources import recipes_dir

        path = recipes_dir() / "default.yaml"
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder; give a recipe .yaml file (a run folder's is {path}/recipe.yaml)")
    if path.exists() and not path.is_file():
        raise RecipeError(f"recipe {path} is not a regular file (a pipe or device?); give a recipe .yaml file")
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}  # a UTF-8 BOM is dropped
    except UnicodeDecodeError as exc:
        raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise RecipeError(f"recipe file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe file {path} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must be a mapping of sections (name, data, teacher, ...)")
    return recipe_from_dict(data, overrides or [])


def recipe_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> Recipe:
    data = apply_overrides(data, overrides or [])
    recipe = from_dict(Recipe, data)
    recipe.validate()
    return recipe


def infer_task(data: DataConfig) -> str:
    """Image or text classification, from where the data comes from (a folder or digits: images)."""
    image, text = (registry.names("task", modality=m, generates=False)[0] for m in ("image", "text"))
    if data.train:
        return image if Path(data.train).is_dir() else text
    if data.dataset == "digits":
        return image
    raise RecipeError(f"recipe field task: say '{image}' or '{text}' for a Hugging Face dataset")
