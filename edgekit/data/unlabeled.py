"""Unlabeled transfer data (``--unlabeled FILE``, ``data.unlabeled``): texts or images without labels
that the teacher labels for distillation. Their split carries label -1: the KD term learns from them,
the label term never sees them, and no evaluation uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.data.images import IMAGE_SUFFIXES
from edgekit.data.splits import Split
from edgekit.data.tables import read_texts
from edgekit.errors import EdgekitError

UNLABELED = -1  # the label of an example without one


def load_unlabeled(path: str, text_column: str, images: bool) -> Split:
    """Texts (a ``.txt`` file, one per line, or a CSV/TSV/JSONL file's ``text_column``) or images (every
    image file under a folder, in any layout) as a split labelled -1."""
    items = _images(Path(path)) if images else read_texts(path, text_column)
    return Split("unlabeled", items, np.full(len(items), UNLABELED, dtype=np.int64))


def _images(root: Path) -> list[str]:
    if not root.exists():
        raise EdgekitError(f"unlabeled folder {root} does not exist; check the path")
    if not root.is_dir():
        raise EdgekitError(f"unlabeled images must be a folder of image files; {root} is a file")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise EdgekitError(f"unlabeled folder {root} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def with_unlabeled(train: Split, unlabeled: Split) -> Split:
    """The transfer split: the labelled examples first (their indices unchanged), then the unlabeled."""
    return Split(
        "train+unlabeled", list(train.items) + list(unlabeled.items), np.concatenate([train.labels, unlabeled.labels])
    )
