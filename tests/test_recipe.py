from pathlib import Path

import pytest

from edgekit.recipe import Recipe, RecipeError, apply_overrides, infer_task, load_recipe, recipe_from_dict


def test_embedded_default_is_valid():
    recipe = load_recipe(None)
    assert recipe.teacher.model == "resnet18"
    assert recipe.student.model == "mobilenet_v2"
    assert recipe.distill.temperature == 4.0 and recipe.distill.alpha == 0.3
    assert recipe.export.resolved_precision == "int8" and recipe.bench.devices == ["cpu"]


def test_round_trip_through_yaml(tmp_path):
    recipe = load_recipe(None, ["distill.alpha=0.5", "bench.devices=[cpu, rpi4]"])
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    again = load_recipe(path)
    assert again == recipe and again.distill.alpha == 0.5 and again.bench.devices == ["cpu", "rpi4"]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "distill.alpah=0.5",
            "recipe field distill.alpah is unknown; allowed fields here: strategy, temperature, alpha, teachers",
        ),
        (
            "distill.strategy=fast",
            "recipe field distill.strategy: 'fast' is not one of straightforward, successive, "
            "multi-teacher, self-quantized",
        ),
        ("distill.teacher_weights=[0, 0]", "recipe field distill.teacher_weights: the weights must not all be 0"),
        ("distill.teachers=[a]", "several teachers need strategy multi-teacher"),
        ("student.layers=[0]", "recipe field student.layers[0]: 0 is outside [1, 1000]"),
        ("distill.lora.r=0", "recipe field distill.lora.r: 0 is outside [1, 4096]"),
        ("distill.alpha=1.5", "recipe field distill.alpha: 1.5 is outside [0, 1]"),
        ("distill.temperature=0", "recipe field distill.temperature: 0.0 is outside (0, 100]"),
        ("distill.train.epochs=two", "recipe field distill.train.epochs: expected a whole number, got 'two'"),
        ("teacher.pretrained=maybe", "recipe field teacher.pretrained: expected true or false"),
        (
            "task=speech",
            "recipe field task: 'speech' is not one of image-classification, text-classification, text2text",
        ),
        ("export.format=tflite", "recipe field export.format: 'tflite' is not one of onnx"),
    ],
)
def test_bad_fields_are_named(override, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(None, [override])
    assert message in str(info.value)


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_override_needs_equals():
    with pytest.raises(RecipeError, match="section.field=value"):
        apply_overrides({}, ["distill.alpha"])


def test_override_creates_sections():
    data = apply_overrides({}, ["teacher.train.epochs=3"])
    assert data == {"teacher": {"train": {"epochs": 3}}}
    assert recipe_from_dict(data).teacher.train.epochs == 3


def test_task_is_inferred(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert infer_task(Recipe().data) == "image-classification"
    assert infer_task(recipe_from_dict({"data": {"train": str(tmp_path / "x.tsv")}}).data) == "text-classification"
    assert infer_task(recipe_from_dict({"data": {"train": str(tmp_path / "imgs")}}).data) == "image-classification"
    with pytest.raises(RecipeError, match="task"):
        infer_task(recipe_from_dict({"data": {"dataset": "glue:sst2"}}).data)


def test_shipped_recipes_are_valid():
    from edgekit.resources import recipes_dir

    for path in Path(recipes_dir()).glob("*.yaml"):
        load_recipe(path)


def test_the_default_batch_size_gives_every_run_enough_optimizer_steps():
    from edgekit.recipe import TrainConfig
    from edgekit.train.loop import MIN_STEPS, auto_batch_size

    assert TrainConfig().batch_size is None  # picked per run, from its size
    # a few thousand examples for one epoch: 16 (161 steps; 64 gave 41 steps and 20 points less)
    assert auto_batch_size(2567, 1) == 16 and auto_batch_size(2567, 3) == 32
    assert auto_batch_size(50_000, 3) == 64  # large data keeps the old default
    assert auto_batch_size(255, 3) == 8  # too small for 150 steps at any size: the smallest
    assert auto_batch_size(2567, 1, processes=2) == 8  # per process: the same steps as 16 in one
    for n, epochs in ((100, 1), (2567, 1), (4634, 3), (10**6, 1)):
        size = auto_batch_size(n, epochs)
        steps = epochs * -(-n // size)
        assert steps >= MIN_STEPS or size == 8
