"""Turn a DataConfig into train/val/test splits with integer labels and named classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekit.data.images import digits_images, read_image_folder
from edgekit.data.tables import read_table
from edgekit.errors import EdgekitError


@dataclass
class Split:
    """Examples of one split: texts, or image sources (paths, arrays, Pillow images)."""

    name: str
    items: Sequence[Any]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def take(self, indices: Sequence[int], name: str | None = None) -> "Split":
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


def _check_not_empty(split: Split, where: str) -> None:
    if len(split) == 0:
        raise EdgekitError(f"{where} has no examples; give a non-empty dataset")


def load_task_data(cfg, task: str, seed: int = 0) -> TaskData:
    """Load the splits described by a recipe's ``data`` section."""
    if task == "text2text":
        data = _text2text(cfg, seed)
    elif cfg.train:
        data = _from_files(cfg, task, seed)
    elif cfg.dataset == "digits":
        data = _digits(cfg, seed)
    else:
        from edgekit.data.hf import load_hf_dataset

        data = load_hf_dataset(cfg, task, seed)
    if cfg.limit:
        data.train = data.train.take(range(min(cfg.limit, len(data.train))))
    for split in (data.train, data.val, data.test):
        if split is not None:
            _check_not_empty(split, f"the {split.name} split")
    if task != "text2text" and len(data.label_names) < 2:
        raise EdgekitError(
            f"the training data has {len(data.label_names)} label(s) ({', '.join(data.label_names)}); classification needs two or more"
        )
    return data


def _text2text(cfg, seed: int) -> TaskData:
    """Source/target pairs from CSV/TSV/JSONL files (``text_column`` -> ``label_column``)."""
    if not cfg.train:
        raise EdgekitError("text2text data comes from files: give --train FILE (columns: source text and target text)")

    def read(path, name):
        items, targets = read_table(path, cfg.text_column, cfg.label_column)
        return Split(name, items, np.asarray(targets, dtype=object))

    train = read(cfg.train, "train")
    if cfg.val:
        val = read(cfg.val, "val")
    else:
        order = np.random.default_rng(seed).permutation(len(train))
        n_val = max(1, int(round(len(train) * cfg.val_fraction))) if len(train) > 1 else 0
        val, train = train.take(np.sort(order[:n_val]), "val"), train.take(np.sort(order[n_val:]), "train")
    test = read(cfg.test, "test") if cfg.test else None
    return TaskData("text2text", [], train, val, test, source="files")


def _digits(cfg, seed: int) -> TaskData:
    images, names = digits_images()
    label_names = [str(i) for i in range(10)]
    labels = encode_labels(names, label_names, "digits")
    rest, test_idx = stratified_split(labels, cfg.test_fraction, seed)
    train_rel, val_rel = stratified_split(labels[rest], cfg.val_fraction, seed + 1)
    full = Split("all", list(images), labels)
    return TaskData(
        "image-classification", label_names,
        full.take(rest[train_rel], "train"), full.take(rest[val_rel], "val"), full.take(test_idx, "test"),
        source="digits",
    )


def _read(path: str, cfg, task: str) -> tuple[list, list[str]]:
    if task == "image-classification":
        return read_image_folder(path)
    return read_table(path, cfg.text_column, cfg.label_column)


def _from_files(cfg, task: str, seed: int) -> TaskData:
    if task == "image-classification" and not Path(cfg.train).is_dir():
        raise EdgekitError(f"{cfg.train} is not a folder; image data must be an ImageFolder folder (root/<label>/<image>)")
    items, names = _read(cfg.train, cfg, task)
    label_names = sorted(set(names))
    train = Split("train", items, encode_labels(names, label_names, str(cfg.train)))
    if cfg.val:
        v_items, v_names = _read(cfg.val, cfg, task)
        val = Split("val", v_items, encode_labels(v_names, label_names, str(cfg.val)))
    else:
        keep, held = stratified_split(train.labels, cfg.val_fraction, seed)
        train, val = train.take(keep, "train"), train.take(held, "val")
    test = None
    if cfg.test:
        t_items, t_names = _read(cfg.test, cfg, task)
        test = Split("test", t_items, encode_labels(t_names, label_names, str(cfg.test)))
    return TaskData(task, label_names, train, val, test, source="files")


def load_eval_split(cfg, task: str, label_names: list[str], split: str = "test", seed: int = 0) -> Split:
    """One split for evaluating an already trained model whose labels are fixed."""
    if task == "text2text":
        path = cfg.test or cfg.val or cfg.train
        if not path:
            raise EdgekitError("text2text data comes from files: give --data FILE (columns: source text and target text)")
        items, targets = read_table(path, cfg.text_column, cfg.label_column)
        result = Split(split, items, np.asarray(targets, dtype=object))
    elif cfg.test or cfg.train or cfg.val:
        path = cfg.test or cfg.val or cfg.train
        items, names = _read(path, cfg, task)
        result = Split(split, items, encode_labels(names, label_names, str(path)))
    else:
        data = load_task_data(cfg, task, seed)
        if data.label_names != label_names:
            raise EdgekitError(
                f"the dataset's labels ({', '.join(data.label_names)}) differ from the model's ({', '.join(label_names)})"
            )
        chosen = {"train": data.train, "val": data.val, "validation": data.val, "test": data.test}.get(split)
        if chosen is None:
            raise EdgekitError(f"the dataset has no {split!r} split; use --split train, val or test")
        result = chosen
    _check_not_empty(result, f"the {split} split")
    return result
