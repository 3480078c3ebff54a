import numpy as np
import pytest

from conftest import write_questions
from edgekit.data.splits import load_task_data, stratified_split
from edgekit.data.tables import read_table
from edgekit.errors import EdgekitError
from edgekit.recipe import recipe_from_dict


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl"])
def test_read_table_formats(tmp_path, fmt):
    path = write_questions(tmp_path / f"q.{fmt}", 20, 0, fmt=fmt)
    texts, labels = read_table(path, "text", "label")
    assert len(texts) == 20 and set(labels) <= {"HUM", "LOC", "NUM"}
    assert all(t.endswith("?") for t in texts)


def test_read_table_errors(tmp_path):
    with pytest.raises(EdgekitError, match="does not exist"):
        read_table(tmp_path / "nope.tsv", "text", "label")
    path = write_questions(tmp_path / "q.tsv", 5, 0)
    with pytest.raises(EdgekitError, match="no column 'sentence'.*--text-column"):
        read_table(path, "sentence", "label")
    empty = tmp_path / "empty.tsv"
    empty.write_text("label\ttext\n")
    with pytest.raises(EdgekitError, match="has no examples"):
        read_table(empty, "text", "label")
    xlsx = tmp_path / "q.xlsx"
    xlsx.write_text("x")
    with pytest.raises(EdgekitError, match="unknown format"):
        read_table(xlsx, "text", "label")


def test_labels_are_kept_as_names_and_checked(tmp_path):
    train = write_questions(tmp_path / "train.tsv", 60, 0, labels=("HUM", "LOC"))
    test = write_questions(tmp_path / "test.tsv", 20, 1, labels=("HUM", "NUM"))
    recipe = recipe_from_dict({"data": {"train": str(train)}})
    data = load_task_data(recipe.data, "text-classification")
    assert data.label_names == ["HUM", "LOC"]
    assert data.test is None and data.eval_split is data.val
    assert len(data.train) + len(data.val) == 60
    bad = recipe_from_dict({"data": {"train": str(train), "test": str(test)}})
    with pytest.raises(EdgekitError, match="labels not in the training data \\('NUM'\\)"):
        load_task_data(bad.data, "text-classification")


def test_single_label_data_is_rejected(tmp_path):
    train = write_questions(tmp_path / "train.tsv", 30, 0, labels=("HUM",))
    with pytest.raises(EdgekitError, match="two or more"):
        load_task_data(recipe_from_dict({"data": {"train": str(train)}}).data, "text-classification")


def test_digits_splits_are_stratified_and_disjoint():
    data = load_task_data(recipe_from_dict({}).data, "image-classification", seed=0)
    sizes = len(data.train), len(data.val), len(data.test)
    assert sum(sizes) == 1797 and sizes[2] == pytest.approx(0.2 * 1797, abs=10)
    assert data.label_names == [str(i) for i in range(10)]
    assert set(np.unique(data.test.labels)) == set(range(10))


def test_stratified_split_keeps_every_class():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert set(labels[held]) == {0, 1} and set(labels[keep]) == {0, 1, 2}
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)


def test_image_folder(tmp_path):
    from PIL import Image

    from edgekit.data.images import preprocess_image, read_image_folder

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 10), (i * 40, 0, 0)).save(tmp_path / label / f"{i}.png")
    paths, labels = read_image_folder(tmp_path)
    assert len(paths) == 6 and labels.count("cat") == 3
    array = preprocess_image(paths[0], 16)
    assert array.shape == (3, 16, 16) and array.dtype == np.float32
    with pytest.raises(EdgekitError, match="no images"):
        read_image_folder(tmp_path / "cat")


def test_hugging_face_dataset_from_disk(tmp_path):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    rows = {"sentence": ["good", "bad", "great", "awful", "fine", "poor"], "label": [1, 0, 1, 0, 1, 0]}
    unlabeled = {"sentence": ["?", "?"], "label": [-1, -1]}
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows, features=features),
            "validation": datasets.Dataset.from_dict(rows, features=features),
            "test": datasets.Dataset.from_dict(
                unlabeled,
                features=datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("int64")}),
            ),
        }
    ).save_to_disk(tmp_path / "sst")
    recipe = recipe_from_dict(
        {"task": "text-classification", "data": {"dataset": str(tmp_path / "sst"), "text_column": "sentence"}}
    )
    data = load_task_data(recipe.data, "text-classification")
    assert data.label_names == ["negative", "positive"]
    assert len(data.train) == 6 and len(data.val) == 6
    assert data.test is None and data.eval_split is data.val  # GLUE-style unlabelled test split is skipped
    assert list(data.train.labels) == [1, 0, 1, 0, 1, 0]
    bad = recipe_from_dict({"task": "text-classification", "data": {"dataset": str(tmp_path / "sst")}})
    with pytest.raises(EdgekitError, match="no column 'text'.*--text-column"):
        load_task_data(bad.data, "text-classification")


def test_hugging_face_image_dataset_from_disk(tmp_path):
    import datasets
    from PIL import Image

    from edgekit.data.images import preprocess_image

    images = [Image.new("RGB", (12, 12), (40 * i, 0, 0)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["bean", "rust"])})
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)}
    ).save_to_disk(tmp_path / "beans")
    recipe = recipe_from_dict({"task": "image-classification", "data": {"dataset": str(tmp_path / "beans")}})
    data = load_task_data(recipe.data, "image-classification")
    assert data.label_names == ["bean", "rust"]
    assert len(data.train) + len(data.val) == 6 and len(data.val) == 2  # one held out per class
    assert preprocess_image(data.train.items[0], 16).shape == (3, 16, 16)


def test_digits_are_scikit_learns_without_importing_it(monkeypatch, tmp_path):
    """The CSV scikit-learn ships, read directly (importing scikit-learn costs seconds); the same arrays
    as load_digits, and load_digits itself where the file is not where it was."""
    import importlib.util
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from edgekit.data import images

    pixels, names = images.digits_images()
    reference = load_digits()
    assert np.array_equal(pixels, reference.images.astype(np.float32) * (255.0 / 16.0))
    assert names == [str(int(t)) for t in reference.target] and pixels.dtype == np.float32
    probe = (
        "import sys; from edgekit.data.images import digits_images; digits_images(); print('sklearn' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"

    moved = importlib.util.spec_from_file_location("sklearn", tmp_path / "__init__.py")
    moved.submodule_search_locations = [str(tmp_path)]  # a scikit-learn whose data folder is elsewhere
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: moved)
    again, again_names = images.digits_images()
    assert np.array_equal(again, pixels) and again_names == names


def test_augmented_copies_are_perturbed_deterministic_and_unlabeled():
    import subprocess
    import sys

    from edgekit.data.augment import augment_texts, augmented
    from edgekit.data.splits import Split

    texts = [
        "the battery lasts all day and the screen is sharp",
        "it does n't play half of my dvds",
        "ok",
        "   ",  # no words: not copied
        "line one\nline two of a long multi-line review " + "very " * 200 + "long",
    ]
    copies = augment_texts(texts, 3, seed=7)
    assert len(copies) == 3 * 4 and all(c.strip() for c in copies)
    assert copies == augment_texts(texts, 3, seed=7) and copies != augment_texts(texts, 3, seed=8)
    words = {w for t in texts for w in t.split()}
    assert all(set(c.split()) <= words for c in copies)  # replacements come from the texts' own words
    changed = sum(c != " ".join(t.split()) for c, t in zip(copies, [t for t in texts if t.split()] * 3))
    assert changed >= 6  # most copies differ from their text (a 2-word text may come through unchanged)
    assert copies[4 * 0 + 3].count("very") > 150  # a long text keeps most of its words
    # the same copies in a fresh process (no hash randomisation in the seed)
    script = "from edgekit.data.augment import augment_texts; import sys, json; print(json.dumps(augment_texts(json.loads(sys.argv[1]), 3, 7)))"
    import json

    fresh = subprocess.run(
        [sys.executable, "-c", script, json.dumps(texts)], capture_output=True, text=True, check=True
    )
    assert json.loads(fresh.stdout) == copies
    split = augmented(Split("train", texts[:2], np.array([0, 1])), 2, seed=0)
    assert len(split) == 4 and (split.labels == -1).all()
    assert augment_texts(["", " "], 2, seed=0) == []
