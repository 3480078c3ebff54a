"""Options shared by the training and evaluation commands, turned into recipe overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry

RecipeOpt = Annotated[
    Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML to start from (flags override it).")
]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a recipe field: section.field=value (repeatable).")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (a stage folder with meta.json).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace the output folder if it exists.")]
TrainOpt = Annotated[
    Optional[str],
    typer.Option("--train", help="Training data: CSV/TSV/JSONL file (text) or ImageFolder folder (images)."),
]
ValOpt = Annotated[
    Optional[str], typer.Option("--val", help="Validation data (default: a seeded, stratified part of --train).")
]
TestOpt = Annotated[Optional[str], typer.Option("--test", help="Test data (default: the validation data).")]
DatasetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dataset", help="'digits' (built in), a Hugging Face dataset NAME[:CONFIG], or a save_to_disk folder."
    ),
]
TextColOpt = Annotated[Optional[str], typer.Option("--text-column", help="Column holding the text (default: text).")]
LabelColOpt = Annotated[
    Optional[str], typer.Option("--label-column", help="Column holding the label (default: label).")
]
TaskOpt = Annotated[
    Optional[str],
    typer.Option(
        "--task",
        help="; ".join(f"{e.name}: {e.summary}" for e in registry.entries("task"))
        + " (default: inferred from the data).",
    ),
]
ImageSizeOpt = Annotated[
    Optional[int],
    typer.Option("--image-size", help="Image side in pixels (default: the model's, 224 for torchvision)."),
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (default: 0).")]
WriteRecipeOpt = Annotated[
    Optional[Path], typer.Option("--write-recipe", help="Also write the recipe that reproduces this command.")
]


def data_overrides(
    train=None,
    val=None,
    test=None,
    dataset=None,
    text_column=None,
    label_column=None,
    task=None,
    image_size=None,
    seed=None,
) -> list[str]:
    """Flags to ``--set`` strings. Giving data files replaces the base recipe's data source."""
    overrides = []
    if train or dataset:
        overrides += ["data.train=null", "data.val=null", "data.test=null", "data.dataset=null", "data.unlabeled=null"]
        if task is None:
            overrides.append("task=null")
    values = {
        "data.train": train,
        "data.val": val,
        "data.test": test,
        "data.dataset": dataset,
        "data.text_column": text_column,
        "data.label_column": label_column,
        "task": task,
        "data.image_size": image_size,
        "seed": seed,
    }
    for key, value in values.items():
        if value is not None:
            overrides.append(f"{key}={_yaml_scalar(value)}")
    return overrides


def _yaml_scalar(value) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else str(value)


def build_recipe(recipe_path: Optional[Path], overrides: list[str], sets: Optional[list[str]]):
    """The base recipe (the file, or built-in defaults), then flags, then --set."""
    from edgekit.recipe import load_recipe, recipe_from_dict

    all_overrides = overrides + list(sets or [])
    if recipe_path is not None:
        return load_recipe(recipe_path, all_overrides)
    return recipe_from_dict({}, all_overrides)


def write_recipe_file(recipe, path: Optional[Path]) -> None:
    if path is not None:
        from edgekit.artifacts import write_text_atomic

        write_text_atomic(path, recipe.to_yaml())
