"""Tasks: one spec per task (classification of images or texts, seq2seq), registered in
:mod:`edgekit.registry`. ``task_spec(name)`` is the one place a task name turns into behaviour."""

from __future__ import annotations

from edgekit.tasks.base import TaskSpec


def task_spec(name: str) -> TaskSpec:
    """The spec of task ``name``; one clear line for an unknown name."""
    from edgekit import registry

    return registry.load("task", str(name), option="task")


__all__ = ["TaskSpec", "task_spec"]
