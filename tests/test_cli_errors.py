"""Errors a user can cause: one line, non-zero exit, no traceback, no half-written output."""

import pytest

from conftest import assert_user_error, cli_in_process, run_cli, write_questions

COMMANDS = ["run", "distill", "finetune", "prune", "export", "eval", "bench", "report", "devices"]


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in COMMANDS:
        assert f"  {command} " in proc.stdout, command


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_unknown_option(tmp_path):
    proc = run_cli("run", "--bogus", cwd=tmp_path)
    assert_user_error(proc, "no such option: --bogus", "edgekit run --help")
    assert list(tmp_path.iterdir()) == []


def test_missing_recipe_file(tmp_path):
    proc = run_cli("run", tmp_path / "missing.yaml", "--out", tmp_path / "out")
    assert_user_error(proc, "does not exist")
    assert not (tmp_path / "out").exists()


def test_bad_recipe_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ndistill:\n  temprature: 4\n")
    proc = run_cli("run", recipe, "--out", tmp_path / "out")
    assert_user_error(proc, "distill.temprature is unknown", "temperature")
    assert not (tmp_path / "out").exists()


def test_bad_set_value(tmp_path):
    proc = run_cli("run", "--set", "distill.alpha=2", "--out", tmp_path / "out")
    assert_user_error(proc, "distill.alpha: 2.0 is outside [0, 1]")
    assert not (tmp_path / "out").exists()


def test_missing_data_file(tmp_path):
    proc = run_cli("finetune", "resnet18", "--train", tmp_path / "nope.tsv", "--out", tmp_path / "out")
    assert_user_error(proc, "nope.tsv does not exist")
    assert not (tmp_path / "out").exists()


def test_empty_dataset(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("label\ttext\n")
    proc = run_cli("finetune", "resnet18", "--train", empty, "--out", tmp_path / "out")
    assert_user_error(proc, "has no examples")
    assert not (tmp_path / "out").exists()


def test_labels_not_in_training_data(tmp_path, tiny_bert):
    train = write_questions(tmp_path / "train.tsv", 40, 0, labels=("HUM", "LOC"))
    test = write_questions(tmp_path / "test.tsv", 10, 1, labels=("NUM",))
    proc = run_cli("finetune", tiny_bert, "--train", train, "--test", test, "--out", tmp_path / "out")
    assert_user_error(proc, "labels not in the training data", "'NUM'")
    assert not (tmp_path / "out").exists()


def test_missing_label_column(tmp_path):
    train = write_questions(tmp_path / "train.tsv", 20, 0)
    proc = run_cli(
        "finetune", "bert-base-uncased", "--train", train, "--label-column", "category", "--out", tmp_path / "o"
    )
    assert_user_error(proc, "no column 'category'", "--label-column")


def test_unknown_device_fails_before_training(tmp_path):
    proc = run_cli("run", "--set", "bench.devices=[pi9]", "--out", tmp_path / "out")
    assert_user_error(proc, "unknown device 'pi9'", "cpu, rpi4, rpi5, t4")
    assert not (tmp_path / "out").exists()


def test_device_without_provider_fails_before_training(tmp_path):
    proc = run_cli("run", "--set", "bench.devices=[t4]", "--out", tmp_path / "out")
    assert_user_error(proc, "needs CUDAExecutionProvider", "onnxruntime-gpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "sets, needles",
    [
        (["prune.method=heads"], ["prune.method", "mobilenet_v2 is a CNN"]),
        (
            ["prune.method=channels", "teacher.model=x/bert", "student.model=null", "student.layers=[2]"],
            ["channels prunes CNNs"],
        ),
        (["prune.method=shrink"], ["prune.method", "not one of"]),
        (["prune.amount=1.2"], ["prune.amount"]),
    ],
)
def test_bad_prune_recipe_fails_before_training(tmp_path, sets, needles):
    proc = cli_in_process("run", *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "out")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "out").exists()


def test_unknown_model_name(tmp_path):
    proc = run_cli("finetune", "resnet1800", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "out")
    assert_user_error(proc, "unknown model 'resnet1800'")
    assert not (tmp_path / "out").exists()


def test_export_of_a_non_stage_without_data(tmp_path):
    proc = run_cli("export", tmp_path, "--out", tmp_path / "b")
    assert_user_error(proc, "not an edgekit stage folder")
    assert not (tmp_path / "b").exists()


def test_eval_and_bench_of_missing_bundle(tmp_path):
    assert_user_error(run_cli("eval", tmp_path / "nope", "--dataset", "digits"), "does not exist")
    assert_user_error(run_cli("bench", tmp_path / "nope"), "does not exist")
    assert_user_error(run_cli("bench", tmp_path), "not an exported bundle")


def test_report_of_a_folder_without_stages(tmp_path):
    assert_user_error(run_cli("report", tmp_path), "holds no stage folders")


def test_devices_list_and_show():
    proc = run_cli("devices", "list")
    assert proc.returncode == 0
    for name in ("cpu", "rpi4", "rpi5", "t4"):
        assert name in proc.stdout
    show = run_cli("devices", "show", "rpi4")
    assert show.returncode == 0 and "threads: 4" in show.stdout and "arm64-int8" in show.stdout
    assert_user_error(run_cli("devices", "show", "nope"), "unknown device 'nope'")


def test_prune_bad_amount(tmp_path):
    proc = run_cli("prune", tmp_path, "--amount", "1.5", "--out", tmp_path / "p")
    assert_user_error(proc)
    assert not (tmp_path / "p").exists()
