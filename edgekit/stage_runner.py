"""The one stage runner: every stage (finetune, lora, distill, prune, export, eval, bench) is

    fingerprint (its config and its parent's fingerprint) -> reuse a finished folder with the same
    fingerprint -> build in an atomic, locked folder -> meta.json (config, metrics, parent = lineage)

and implements only its own work between :meth:`Stage.folder` and :meth:`Stage.finish`::

    stage = Stage("prune", out, config, parent=model_dir)
    if (meta := stage.reused(reuse)) is not None:
        return meta
    with stage.folder(force) as folder:
        ...                          # the work, writing into folder
        return stage.finish(metrics=metrics, parameters=n)

A failure or Ctrl-C inside leaves no folder behind (see :func:`edgekit.artifacts.stage_folder`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import log
from edgekit.artifacts import fingerprint, is_stage, stage_folder, tidy_reused
from edgekit.records import StageMeta, read_meta, write_meta


def stage_fingerprint(stage: str, config: dict[str, Any], parent: Path | None) -> str:
    """A stage's identity: its name, its config and its parent's fingerprint."""
    parent_print = read_meta(parent).fingerprint if parent is not None and is_stage(parent) else None
    return fingerprint(stage, config, parent_print)


def reusable(out: Path, print_: str) -> bool:
    return is_stage(out) and read_meta(out).fingerprint == print_


def task_of(recipe) -> str:
    from edgekit.recipe import infer_task

    return recipe.task or infer_task(recipe.data)


def load_data(recipe):
    """The recipe's task data (splits, label names)."""
    from edgekit.data import load_task_data

    return load_task_data(recipe.data, task_of(recipe), recipe.seed)


@dataclass
class Stage:
    name: str
    out: Path
    config: dict[str, Any]
    parent: Path | None = None
    fingerprint: str = field(init=False)
    _folder: Path | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.parent = Path(self.parent) if self.parent is not None else None
        self.fingerprint = stage_fingerprint(self.name, self.config, self.parent)

    def reused(self, reuse: bool) -> StageMeta | None:
        """The finished stage's meta when ``reuse`` and ``out`` holds this very fingerprint, else None."""
        if reuse and reusable(self.out, self.fingerprint):
            log.info(f"{self.name}: reused {self.out}")
            tidy_reused(self.out)
            return read_meta(self.out)
        return None

    @contextlib.contextmanager
    def folder(self, force: bool = False) -> Iterator[Path]:
        """The stage's folder, built aside and locked; it replaces ``out`` only when the block ends."""
        with stage_folder(self.out, force) as folder:
            self._folder = folder
            try:
                yield folder
            finally:
                self._folder = None

    def finish(
        self,
        *,
        metrics: dict[str, Any],
        parameters: int | None = None,
        extra: dict[str, Any] | None = None,
        stage: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> StageMeta:
        """Write meta.json (inside :meth:`folder`) and return it."""
        if self._folder is None:
            raise RuntimeError("Stage.finish() is called inside 'with stage.folder(...)'")
        return write_meta(
            self._folder,
            stage=stage or self.name,
            config=self.config if config is None else config,
            parent=self.parent,
            metrics=metrics,
            parameters=parameters,
            fingerprint_value=self.fingerprint,
            extra=extra,
        )
