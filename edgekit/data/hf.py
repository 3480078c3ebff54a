"""Hugging Face datasets: a hub id ``NAME[:CONFIG]`` for users online, or a ``save_to_disk`` folder."""

from __future__ import annotations

from pathlib import Path

from edgekit.data.splits import Split, TaskData, encode_labels, stratified_split
from edgekit.errors import EdgekitError
from edgekit.tasks import task_spec

VAL_NAMES = ("validation", "val", "valid", "dev")


def _load(spec: str):
    try:
        import datasets
    except ImportError:
        raise EdgekitError("Hugging Face datasets need the training extra: pip install 'edgekit[train]'") from None
    if Path(spec).is_dir():
        loaded = datasets.load_from_disk(spec)
    else:
        name, _, config = spec.partition(":")
        try:
            loaded = datasets.load_dataset(name, config or None)
        except Exception as exc:  # network, unknown name, bad config: one line for the user
            raise EdgekitError(f"cannot load dataset {spec!r}: {str(exc).splitlines()[0]}") from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _column(ds, name: str, option: str):
    if name not in ds.column_names:
        raise EdgekitError(f"dataset has no column {name!r} (columns: {', '.join(ds.column_names)}); set {option}")
    return ds[name]


def load_hf_dataset(cfg, task: str, seed: int) -> TaskData:
    dd = _load(cfg.dataset)
    if "train" not in dd:
        raise EdgekitError(f"dataset {cfg.dataset!r} has no 'train' split (splits: {', '.join(dd.keys())})")
    images = task_spec(task).modality == "image"
    item_column = cfg.image_column if images else cfg.text_column
    item_option = "--image-column" if images else "--text-column"
    feature = dd["train"].features.get(cfg.label_column)
    names_of = getattr(feature, "names", None)

    def split(key: str, name: str) -> tuple[list, list[str]]:
        ds = dd[key]
        items = list(_column(ds, item_column, item_option))
        raw = list(_column(ds, cfg.label_column, "--label-column"))
        if names_of is not None:
            if any(v is None or int(v) < 0 for v in raw):
                raise EdgekitError(f"dataset split {key!r} has unlabelled rows (label -1); use another split")
            return items, [names_of[int(v)] for v in raw]
        return items, [str(v) for v in raw]

    items, names = split("train", "train")
    label_names = list(names_of) if names_of is not None else sorted(set(names))
    train = Split("train", items, encode_labels(names, label_names, f"{cfg.dataset} train"))
    val_key = next((k for k in VAL_NAMES if k in dd), None)
    if val_key:
        v_items, v_names = split(val_key, "val")
        val = Split("val", v_items, encode_labels(v_names, label_names, f"{cfg.dataset} {val_key}"))
    else:
        keep, held = stratified_split(train.labels, cfg.val_fraction, seed)
        train, val = train.take(keep, "train"), train.take(held, "val")
    test = None
    if "test" in dd:
        raw = list(_column(dd["test"], cfg.label_column, "--label-column"))
        # GLUE-style test splits carry no labels (-1): evaluate on validation instead.
        if raw and not any(v is None or (names_of is not None and int(v) < 0) for v in raw):
            t_items, t_names = split("test", "test")
            test = Split("test", t_items, encode_labels(t_names, label_names, f"{cfg.dataset} test"))
    return TaskData(task, label_names, train, val, test, source=f"hf:{cfg.dataset}")
