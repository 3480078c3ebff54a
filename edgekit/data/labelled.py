"""Labelled examples for classification: files (CSV/TSV/JSONL texts, ImageFolder images), scikit-learn's
digits, or a Hugging Face dataset; string labels turned into class indices."""

from __future__ import annotations

from pathlib import Path

from edgekit.data.images import digits_images, read_image_folder
from edgekit.data.splits import Split, TaskData, encode_labels, stratified_split
from edgekit.data.tables import read_table
from edgekit.errors import EdgekitError


def load_labelled(cfg, task: str, seed: int) -> TaskData:
    if cfg.train:
        return _from_files(cfg, task, seed)
    if cfg.dataset == "digits":
        return _digits(cfg, task, seed)
    from edgekit.data.hf import load_hf_dataset

    return load_hf_dataset(cfg, task, seed)


def load_labelled_eval_split(cfg, task: str, label_names: list[str], split: str = "test", seed: int = 0) -> Split:
    if cfg.test or cfg.train or cfg.val:
        path = cfg.test or cfg.val or cfg.train
        items, names = _read(path, cfg, task)
        return Split(split, items, encode_labels(names, label_names, str(path)))
    from edgekit.data.splits import load_task_data

    data = load_task_data(cfg, task, seed)
    if data.label_names != label_names:
        raise EdgekitError(
            f"the dataset's labels ({', '.join(data.label_names)}) differ from the model's ({', '.join(label_names)})"
        )
    chosen = {"train": data.train, "val": data.val, "validation": data.val, "test": data.test}.get(split)
    if chosen is None:
        raise EdgekitError(f"the dataset has no {split!r} split; use --split train, val or test")
    return chosen


def _digits(cfg, task: str, seed: int) -> TaskData:
    images, names = digits_images()
    label_names = [str(i) for i in range(10)]
    labels = encode_labels(names, label_names, "digits")
    rest, test_idx = stratified_split(labels, cfg.test_fraction, seed)
    train_rel, val_rel = stratified_split(labels[rest], cfg.val_fraction, seed + 1)
    full = Split("all", list(images), labels)
    return TaskData(
        task,
        label_names,
        full.take(rest[train_rel], "train"),
        full.take(rest[val_rel], "val"),
        full.take(test_idx, "test"),
        source="digits",
    )


def _read(path: str, cfg, task: str) -> tuple[list, list[str]]:
    if _images(task):
        return read_image_folder(path)
    return read_table(path, cfg.text_column, cfg.label_column)


def _from_files(cfg, task: str, seed: int) -> TaskData:
    if _images(task) and not Path(cfg.train).is_dir():
        raise EdgekitError(
            f"{cfg.train} is not a folder; image data must be an ImageFolder folder (root/<label>/<image>)"
        )
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


def _images(task: str) -> bool:
    from edgekit.tasks import task_spec

    return task_spec(task).modality == "image"
