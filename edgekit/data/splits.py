"""Turn a DataConfig into train/val/test splits with integer labels and named classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError


@dataclass
class Split:
    """Examples of one split: texts, or image sources (paths, arrays, Pillow images)."""

    name: str
    items: Sequence[Any]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def take(self, indices: Sequence[int], name: str | None = None) -> Split:
        items = [self.items[i] for i in indices]
        return Split(name or self.name, items, self.labels[np.asarray(indices, dtype=np.int64)])


@dataclass
class TaskData:
    task: str
    label_names: list[str]
    train: Split
    val: Split
    test: Split | None
    source: str

    @property
    def eval_split(self) -> Split:
        return self.test if self.test is not None else self.val


def encode_labels(names: list[str], label_names: list[str], where: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        raise EdgekitError(
            f"{where} has labels not in the training data ({shown}); known labels: {', '.join(label_names)}"
        )
    return np.asarray([index[n] for n in names], dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of each class held out, at least one example per class
    where the class has two or more."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return np.sort(np.asarray(keep, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def check_not_empty(split: Split, where: str) -> None:
    if len(split) == 0:
        raise EdgekitError(f"{where} has no examples; give a non-empty dataset")


def load_task_data(cfg, task: str, seed: int = 0) -> TaskData:
    """Load the splits described by a recipe's ``data`` section (the task's ``load_data`` job)."""
    from edgekit.tasks import task_spec

    spec = task_spec(task)
    data = spec.job("load_data")(cfg, task, seed)
    if cfg.limit:
        data.train = data.train.take(range(min(cfg.limit, len(data.train))))
    for split in (data.train, data.val, data.test):
        if split is not None:
            check_not_empty(split, f"the {split.name} split")
    if len(data.label_names) < spec.min_labels:
        raise EdgekitError(
            f"the training data has {len(data.label_names)} label(s) ({', '.join(data.label_names)}); classification needs two or more"
        )
    return data


def load_eval_split(cfg, task: str, label_names: list[str], split: str = "test", seed: int = 0) -> Split:
    """One split for evaluating an already trained model whose labels are fixed (the task's
    ``load_eval_split`` job)."""
    from edgekit.tasks import task_spec

    result = task_spec(task).job("load_eval_split")(cfg, task, label_names, split, seed)
    check_not_empty(result, f"the {split} split")
    return result
