"""Source/target text pairs for seq2seq tasks, from CSV/TSV/JSONL files (``text_column`` -> ``label_column``)."""

from __future__ import annotations

import numpy as np

from edgekit.data.splits import Split, TaskData
from edgekit.data.tables import read_table
from edgekit.errors import EdgekitError

_FILES_ONLY = "encoder-decoder (seq2seq) data comes from files: give {flag} FILE (columns: source text and target text)"


def load_pairs(cfg, task: str, seed: int) -> TaskData:
    """Train/val/test pairs; without a val file a seeded share of the training pairs."""
    if not cfg.train:
        raise EdgekitError(_FILES_ONLY.format(flag="--train"))

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
    return TaskData(task, [], train, val, test, source="files")


def load_eval_pairs(cfg, task: str, label_names: list[str], split: str = "test", seed: int = 0) -> Split:
    path = cfg.test or cfg.val or cfg.train
    if not path:
        raise EdgekitError(_FILES_ONLY.format(flag="--data"))
    items, targets = read_table(path, cfg.text_column, cfg.label_column)
    return Split(split, items, np.asarray(targets, dtype=object))
