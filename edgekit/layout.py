"""Where things live on disk: the run folder of ``edgekit run`` and the files beside a stage.

    RUN/recipe.yaml  teacher/  student/  [lora/]  [pruned/]  export/  eval/  bench-<device>/
        report.md  report.html  report.json  *.png
    RUN/sweep/<strategy>-<student>/{student,export,eval,bench-<device>}/  RUN/sweep.json   (a sweep)

``student/`` is replaced by the sweep's cells when the recipe has a ``sweep:`` section; ``lora/`` and
``pruned/`` exist when the recipe asks for them. The pipeline writes this layout and the report reads
it, both through the names below. Torch-free core: imports nothing of edgekit but errors and artifacts.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.artifacts import is_stage
from edgekit.errors import EdgekitError

RECIPE = "recipe.yaml"
TEACHER, STUDENT, LORA, PRUNED = "teacher", "student", "lora", "pruned"
EXPORT, EVAL = "export", "eval"
SWEEP, SWEEP_JSON = "sweep", "sweep.json"
REPORT_MD, REPORT_HTML, REPORT_JSON = "report.md", "report.html", "report.json"


def bench_folder(folder: Path, device: str) -> Path:
    """``bench-<device>`` beside an export (the profile's name, or a profile file's stem)."""
    return Path(folder) / f"bench-{Path(device).stem}"


def bench_folders(folder: Path) -> list[Path]:
    return [p for p in sorted(Path(folder).glob("bench-*")) if is_stage(p)]


def sweep_root(run_dir: Path) -> Path:
    return Path(run_dir) / SWEEP


def sweep_cell_folder(run_dir: Path, cell_folder: str) -> Path:
    return sweep_root(run_dir) / cell_folder


def checkpoint_folder(out: Path) -> Path:
    """Checkpoints of an unfinished training stage ``out`` live beside it, until the stage is written."""
    out = Path(out)
    return out.parent / f".{out.name}.checkpoint"


def is_run_folder(folder: Path) -> bool:
    return (Path(folder) / RECIPE).is_file()


def find_stages(run_dir: Path) -> dict[str, Path]:
    """The stage folders directly in a run folder, by name; one clear line when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgekitError(f"run folder {run_dir} does not exist; pass a folder written by 'edgekit run'")
    found = {p.name: p for p in sorted(run_dir.iterdir()) if p.is_dir() and is_stage(p)}
    if not found:
        raise EdgekitError(f"{run_dir} holds no stage folders; pass a folder written by 'edgekit run'")
    return found
