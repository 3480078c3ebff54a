"""The distillation engine: every strategy, derived students, the transfer-set cache, resume after
kill -9, labels-only baselines, seq2seq KD, and the inputs a user can get wrong.

Models are tiny, built from configs, with the real MiniLM WordPiece tokenizer; data are small
real-format files written by the tests."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, at_a_terminal, cli_in_process, run_cli, save_tiny_bert, tiny_t5, write_questions

pytestmark = pytest.mark.slow
FAST = ["--epochs", "3", "--batch-size", "16", "--lr", "1e-3"]


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def model_sha(folder: Path) -> str:
    return hashlib.sha256((folder / "model" / "model.safetensors").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict:
    return {"EDGEKIT_CACHE_DIR": str(tmp_path_factory.mktemp("edgekit-cache"))}


@pytest.fixture(scope="module")
def bert4(tmp_path_factory, minilm_tokenizer_dir) -> Path:
    """A 4-layer, 48-wide BERT (wider than the conftest tiny_bert, so feature KD needs a projection)."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert4"), minilm_tokenizer_dir, hidden=48, layers=4)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, bert4, question_files, cache_env) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    proc = cli_in_process(
        "finetune",
        bert4,
        "--train",
        question_files["train"],
        "--test",
        question_files["test"],
        "--epochs",
        "8",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--out",
        out,
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert meta(out)["metrics"]["accuracy"] > 0.8
    return out


def test_kept_layers_are_evenly_spaced_and_end_with_the_last():
    from edgekit.distill.derive import kept_layers

    assert kept_layers(12, 3) == [3, 7, 11]
    assert kept_layers(6, 1) == [5]
    assert kept_layers(4, 2) == [1, 3]
    assert kept_layers(4, 4) == [0, 1, 2, 3]


def test_teacher_data_missing_from_here_names_the_teachers_recipe(tmp_path, teacher, question_files):
    """A teacher trained elsewhere recorded its data path relative to that directory: without --train
    the error names the teacher's recipe and says how to give the data, before anything is written."""
    import shutil

    moved = tmp_path / "moved-teacher"
    shutil.copytree(teacher, moved)
    recipe = moved / "recipe.yaml"
    text = recipe.read_text()
    assert str(question_files["train"]) in text
    recipe.write_text(text.replace(str(question_files["train"]), "elsewhere/train.tsv"))
    out = tmp_path / "s"
    proc = cli_in_process("distill", "--teacher", moved, "--student-layers", "1", "--out", out)
    assert_user_error(proc, "teacher's recipe", "data.train elsewhere/train.tsv", "--train")
    assert not out.exists()


def test_straightforward_derived_student_with_baseline(tmp_path, teacher, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "2",
        "--baseline",
        *FAST,
        "--out",
        tmp_path / "s",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    info = json.loads((tmp_path / "s" / "model" / "edgekit_model.json").read_text())
    assert info["derived_from"] == {"layers": 4, "kept": [2, 4]}
    assert m["parameters"] < m["teacher"]["parameters"]
    metrics = m["metrics"]
    assert metrics["accuracy"] > 0.6 and set(metrics["per_class"]) == {"HUM", "LOC", "NUM"}
    assert np.asarray(metrics["confusion_matrix"]).sum() == metrics["examples"] == 90
    base = m["baseline_metrics"]
    assert 0 <= base["accuracy"] <= 1 and len(base["history"]) == 3
    assert metrics["kd_gain_points"] == pytest.approx(100 * (metrics["accuracy"] - base["accuracy"]))
    assert "KD gain over labels only" in proc.stdout and "precision" in proc.stdout
    assert not (tmp_path / ".s.checkpoint").exists()  # checkpoints go once the stage is written


def test_successive_chain_keeps_every_link(tmp_path, teacher, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--strategy",
        "successive",
        "--student-layers",
        "3,1",
        *FAST,
        "--out",
        tmp_path / "succ",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "succ")
    assert [row["name"] for row in m["links"]] == ["1-L3", "2-L1"]
    link = tmp_path / "succ" / "links" / "1-L3"
    assert meta(link)["stage"] == "distill-link"
    assert json.loads((link / "model" / "config.json").read_text())["num_hidden_layers"] == 3
    assert json.loads((tmp_path / "succ" / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    # the second link was taught by the first: its teacher score is the first link's score
    assert m["links"][1]["teacher_score"] == pytest.approx(m["links"][0]["accuracy"])


def test_multi_teacher_learned_and_fixed_weights(tmp_path, teacher, cache_env):
    other = tmp_path / "other"
    proc = cli_in_process(
        "distill", "--teacher", teacher, "--student-layers", "2", *FAST, "--out", other, env=cache_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    learned = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--teacher",
        other,
        "--strategy",
        "multi-teacher",
        "--teacher-weights",
        "learned",
        "--student-layers",
        "1",
        *FAST,
        "--out",
        tmp_path / "ml",
        env=cache_env,
    )
    assert learned.returncode == 0, learned.stderr[-3000:]
    weights = meta(tmp_path / "ml")["metrics"]["teacher_weights"]
    assert len(weights) == 2 and sum(weights) == pytest.approx(1, abs=1e-5) and weights != [0.5, 0.5]
    fit = meta(tmp_path / "ml")["metrics"]["teacher_weights_fit"]
    assert fit["fitted_on"] == "val split" and fit["examples"] == 45 and len(fit["teacher_accuracy"]) == 2
    assert fit["ensemble_nll_fitted"] <= fit["ensemble_nll_equal_weights"] + 1e-9
    assert "teacher weights (learned, fitted on the val split: 45 examples" in learned.stdout
    fixed = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--teacher",
        other,
        "--strategy",
        "multi-teacher",
        "--teacher-weights",
        "3,1",
        "--student-layers",
        "1",
        *FAST,
        "--out",
        tmp_path / "mf",
        env=cache_env,
    )
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    m = meta(tmp_path / "mf")
    assert m["metrics"]["teacher_weights"] == pytest.approx([0.75, 0.25])
    assert m["metrics"]["teacher_weights_learned"] is False
    assert len(m["teachers"]) == 2


def test_unlabeled_texts_join_the_transfer_set_for_the_kd_term_only(tmp_path, teacher, cache_env):
    pool = write_questions(tmp_path / "pool.tsv", 120, 7)
    texts = [line.split("\t", 1)[1] for line in pool.read_text().splitlines()[1:]]
    plain = tmp_path / "unlabeled.txt"
    plain.write_text("\n".join(texts[:80]) + "\n\n  \n")  # blank lines are not examples
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--unlabeled",
        plain,
        *FAST,
        "--out",
        tmp_path / "u",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "u")
    assert m["metrics"]["unlabeled_examples"] == 80 and m["metrics"]["transfer_examples"] == 255 + 80
    assert m["config"]["unlabeled"]["examples"] == 80 and "80 of them unlabeled" in proc.stdout
    assert "255 labelled + 80 unlabeled transfer examples" in proc.stderr
    # the teacher labelled the unlabeled texts too: the cached transfer set has a row for each
    tables = list(Path(cache_env["EDGEKIT_CACHE_DIR"], "transfer").glob("*.npz"))
    assert any(np.load(t)["logits"].shape[0] == 335 for t in tables)
    # the recipe records the file; a table with a text column (its label column unread) works the same
    assert "unlabeled:" in (tmp_path / "u" / "recipe.yaml").read_text()
    table = tmp_path / "unlabeled.csv"
    table.write_text("text,label\n" + "".join(f'"{t}",NOT-A-LABEL\n' for t in texts[80:]))
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--unlabeled",
        table,
        "--epochs",
        "1",
        "--out",
        tmp_path / "c",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert meta(tmp_path / "c")["metrics"]["unlabeled_examples"] == 40


def test_dkd_loss_through_the_cli_and_its_options(tmp_path, teacher, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--loss",
        "dkd",
        "--set",
        "distill.loss_options.nontarget_weight=2",
        *FAST,
        "--out",
        tmp_path / "d",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "d")
    assert m["config"]["loss"] == "dkd" and m["config"]["loss_options"] == {"nontarget_weight": 2.0}
    assert m["metrics"]["accuracy"] > 0.5
    bad = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--loss",
        "dkd",
        "--set",
        "distill.loss_options.beta=2",
        "--out",
        tmp_path / "x",
    )
    assert_user_error(bad, "loss_options.beta", "target_weight, nontarget_weight")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "content, needles",
    [
        ("label\nHUM\nLOC\n", ["has no column 'text'", "columns: label", "--text-column"]),
        ("\n\n", ["has no texts"]),
        (None, ["does not exist"]),
    ],
)
def test_bad_unlabeled_files_are_one_line_before_training(tmp_path, teacher, content, needles):
    path = tmp_path / ("u.csv" if content and "label" in content else "u.txt")
    if content is not None:
        path.write_text(content)
    proc = cli_in_process(
        "distill", "--teacher", teacher, "--student-layers", "1", "--unlabeled", path, "--out", tmp_path / "s"
    )
    assert_user_error(proc, *needles)
    assert not (tmp_path / "s").exists()


def test_feature_kd_projects_a_narrower_student(tmp_path, teacher, tiny_bert, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student",
        tiny_bert,
        "--feature-weight",
        "1.0",
        *FAST,
        "--out",
        tmp_path / "f",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "f")
    assert m["metrics"]["feature_projection"] == "linear 32 -> 48"
    assert m["config"]["feature_weight"] == 1.0


def test_intermediate_layer_kd_through_the_cli(tmp_path, teacher, tiny_bert, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "2",
        "--features",
        "hidden=1,attention=0.5,relation",
        *FAST,
        "--out",
        tmp_path / "d",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "d")
    kd = m["metrics"]["feature_kd"]
    assert kd["kinds"] == {"hidden": 1.0, "attention": 0.5, "relation": 1.0}
    assert kd["layer_map"] == [[1, 2], [2, 4]]  # the layers the derived student kept
    # the teacher ran in the first epoch only (255 examples in batches of 16), then the cache served it
    assert kd["teacher_batches"] == 16 and kd["cache"]["examples"] == 255 and kd["teacher_forward_seconds"] > 0
    assert kd["teacher_examples"] == 255
    assert m["config"]["features"] == {"kinds": {"attention": 0.5, "hidden": 1.0, "relation": 1.0}, "layer_map": None}
    assert m["metrics"]["accuracy"] > 0.5
    # a narrower student from elsewhere: an even map unless told, projections to the teacher's width
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student",
        tiny_bert,
        "--features",
        "hidden",
        "--layer-map",
        "1,3",
        "--epochs",
        "1",
        "--out",
        tmp_path / "n",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    kd = meta(tmp_path / "n")["metrics"]["feature_kd"]
    assert kd["layer_map"] == [[1, 1], [2, 3]] and kd["projections"] == ["Linear", "Linear"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--features", "nope"], ["distill.features", "'nope' is not one of hidden, attention, relation, hint"]),
        (["--features", "hidden=x"], ["--features 'hidden=x'", "must be a number"]),
        (["--features", "hidden", "--layer-map", "1,9"], ["names teacher layer 9", "the teacher has 4 layers"]),
        (["--features", "hint"], ["transformer pair", "use hidden or attention or relation"]),
        (["--layer-map", "2,4"], ["layer_map", "set those too"]),
    ],
)
def test_bad_intermediate_kd_settings_are_one_line_before_training(tmp_path, teacher, args, needles):
    proc = cli_in_process("distill", "--teacher", teacher, "--student-layers", "2", *args, "--out", tmp_path / "s")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "s").exists()


def test_self_quantized_merges_exactly_into_a_plain_model(tmp_path, teacher, cache_env):
    proc = cli_in_process(
        "distill", "--teacher", teacher, "--strategy", "self-quantized", *FAST, "--out", tmp_path / "q", env=cache_env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(tmp_path / "q")
    assert m["merge"]["max_abs_logit_diff"] < 1e-3 and m["merge"]["label_agreement"] == 1.0
    config = json.loads((tmp_path / "q" / "model" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain full-precision model: no bitsandbytes, no peft to load it
    adapter = json.loads((tmp_path / "q" / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["query", "value"]
    assert m["parameters"] == m["teacher"]["parameters"]


def test_transfer_set_cache_hits_and_invalidates(tmp_path, monkeypatch, tiny_bert):
    import torch

    from edgekit.data.splits import Split
    from edgekit.models import load_model
    from edgekit.train.transfer import transfer_set

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    handle = load_model(str(tiny_bert), task="text-classification", label_names=["A", "B"])
    split = Split("train", ["who wrote hamlet ?", "where is rome ?", "how far is the moon ?"], np.array([0, 1, 0]))
    first = transfer_set(handle, split)
    again = transfer_set(handle, split)
    assert not first.hit and again.hit and again.key == first.key
    np.testing.assert_array_equal(first.logits, again.logits)
    relabelled = transfer_set(handle, Split("train", split.items, np.array([1, 1, 0])))
    assert not relabelled.hit and relabelled.key != first.key
    with torch.no_grad():
        handle.module.classifier.weight.add_(0.01)
    changed = transfer_set(handle, split)
    assert not changed.hit and changed.key != first.key
    assert len(list((tmp_path / "transfer").glob("*.npz"))) == 3


def test_second_student_reuses_the_cached_transfer_set(tmp_path, teacher, cache_env):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--epochs",
        "1",
        "--out",
        tmp_path / "a",
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cache hit" in proc.stderr  # computed by an earlier test's student of the same teacher and data
    fresh = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--epochs",
        "1",
        "--no-cache",
        "--out",
        tmp_path / "b",
        env=cache_env,
    )
    assert fresh.returncode == 0 and "computed" in fresh.stderr


def test_resume_after_kill_is_bit_exact(tmp_path, teacher, cache_env):
    args = [
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--set",
        "distill.checkpoint_every=5",
    ]
    full = run_cli(*args, "--out", tmp_path / "full", env=cache_env)
    assert full.returncode == 0, full.stderr[-3000:]
    env = {**os.environ, **cache_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args), "--out", str(tmp_path / "cut")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = tmp_path / ".cut.checkpoint" / "1-L2" / "checkpoint.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists():
            state_mtime = checkpoint.stat().st_mtime
            time.sleep(0.5)  # let it train past the checkpoint: that work is lost and must be redone identically
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut").exists() and state_mtime
    resumed = run_cli(*args, "--out", tmp_path / "cut", "--resume", env=cache_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a, b = meta(tmp_path / "full"), meta(tmp_path / "cut")
    assert b["resumed_from"] is not None
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["metrics"]["accuracy"] == b["metrics"]["accuracy"]
    assert model_sha(tmp_path / "full") == model_sha(tmp_path / "cut")
    assert not (tmp_path / ".cut.checkpoint").exists()

    # Ctrl-C: the step in flight finishes, a checkpoint is written, exit code 130 and one clear line
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args), "--out", str(tmp_path / "int")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=at_a_terminal,
    )
    checkpoint = tmp_path / ".int.checkpoint" / "1-L2" / "checkpoint.pt"
    while proc.poll() is None and not checkpoint.exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "--resume" in stderr.strip().splitlines()[-1]
    assert not (tmp_path / "int").exists() and checkpoint.exists()
    again = run_cli(*args, "--out", tmp_path / "int", "--resume", env=cache_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert model_sha(tmp_path / "full") == model_sha(tmp_path / "int")


def test_successive_resume_reuses_finished_links(tmp_path, teacher, cache_env):
    args = ["distill", "--teacher", teacher, "--strategy", "successive", "--student-layers", "3,1", *FAST]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args), "--out", str(tmp_path / "s")],
        env={**os.environ, **cache_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    finished = tmp_path / ".s.checkpoint" / "1-L3" / "stage" / "meta.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not finished.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(*args, "--out", tmp_path / "s", "--resume", env=cache_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(1-L3) finished before" in resumed.stderr
    m = meta(tmp_path / "s")
    assert [row["name"] for row in m["links"]] == ["1-L3", "2-L1"] and m["links"][0]["parameters"] > 0
    assert (tmp_path / "s" / "links" / "1-L3" / "meta.json").is_file()


def test_vision_transformer_student_layers(tmp_path, cache_env):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vit = tmp_path / "vit"
    ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
    ).save_pretrained(vit)
    common = ["--dataset", "digits", "--image-size", "32", "--set", "data.limit=300"]
    teacher = cli_in_process(
        "finetune",
        vit,
        *common,
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--out",
        tmp_path / "t",
        env=cache_env,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    student = cli_in_process(
        "distill",
        "--teacher",
        tmp_path / "t",
        "--strategy",
        "successive",
        "--student-layers",
        "2,1",
        "--feature-weight",
        "0.5",
        "--features",
        "hidden,attention",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--out",
        tmp_path / "s",
        env=cache_env,
    )
    assert student.returncode == 0, student.stderr[-3000:]
    m = meta(tmp_path / "s")
    assert [r["name"] for r in m["links"]] == ["1-L2", "2-L1"]
    assert json.loads((tmp_path / "s" / "model" / "config.json").read_text())["num_hidden_layers"] == 1
    assert m["metrics"]["feature_projection"] == "identity (32)"
    # the second link was cut from the first (its layers 1 and 2 -> link 2's one layer is link 1's second)
    assert m["metrics"]["feature_kd"]["layer_map"] == [[1, 2]]


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory, minilm_tokenizer_dir):
    """A tiny T5 with the MiniLM WordPiece vocabulary and a word-reversal task."""
    import random

    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("t5")
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    tiny_t5(tokenizer, 3).save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    rng = random.Random(0)
    words = ["paris", "rome", "tokyo", "moon", "river", "radio", "python", "tower", "music", "apple"]
    for name, n in (("train.tsv", 200), ("test.tsv", 30)):
        rows = [rng.sample(words, 3) for _ in range(n)]
        (root / name).write_text(
            "source\ttarget\n" + "".join(f"{' '.join(r)}\t{' '.join(reversed(r))}\n" for r in rows)
        )
    return root


def t5_data(seq2seq, test: bool = False) -> list:
    """The word-reversal task's data options for the CLI (sources in `source`, targets in `target`)."""
    test_args = ["--test", seq2seq / "test.tsv"] if test else []
    return ["--task", "text2text", "--train", seq2seq / "train.tsv", *test_args,
            "--text-column", "source", "--label-column", "target"]  # fmt: skip


def test_t5_token_level_kd_with_bleu_and_rouge(tmp_path, seq2seq, cache_env):
    data = t5_data(seq2seq, test=True)
    teacher = cli_in_process(
        "finetune",
        seq2seq / "t5",
        *data,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--out",
        tmp_path / "t",
        env=cache_env,
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    t = meta(tmp_path / "t")["metrics"]
    assert {"bleu", "rouge_l", "exact_match"} <= set(t) and t["examples"] == 30
    assert [h["train_loss"] for h in meta(tmp_path / "t")["history"]][-1] < meta(tmp_path / "t")["history"][0][
        "train_loss"
    ]
    student = cli_in_process(
        "distill",
        "--teacher",
        tmp_path / "t",
        "--student-layers",
        "1",
        "--baseline",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--out",
        tmp_path / "s",
        env=cache_env,
    )
    assert student.returncode == 0, student.stderr[-3000:]
    m = meta(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "model" / "config.json").read_text())
    assert config["num_layers"] == 1 and config["num_decoder_layers"] == 1
    assert "kd_gain_bleu" in m["metrics"] and "bleu" in m["baseline_metrics"]
    assert "BLEU" in student.stdout


def test_t5_vocabulary_mismatch_is_refused(tmp_path, seq2seq):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    other = tmp_path / "other"
    torch.manual_seed(0)
    T5ForConditionalGeneration(
        T5Config(vocab_size=500, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, decoder_start_token_id=0)
    ).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((seq2seq / "t5" / name).read_bytes())
    proc = cli_in_process(
        "distill",
        "--teacher",
        seq2seq / "t5",
        "--student",
        other,
        *t5_data(seq2seq),
        "--epochs",
        "1",
        "--out",
        tmp_path / "s",
    )
    assert_user_error(proc, "tokenizers differ")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--loss", "dkd"], "distill.loss dkd"),
        (["--unlabeled", "UNLABELED"], "unlabeled transfer data"),
        (["--augment", "2"], "augmented transfer data"),
    ],
)
def test_t5_refuses_the_classifier_only_kd_settings(tmp_path, seq2seq, args, needle):
    unlabeled = tmp_path / "u.txt"
    unlabeled.write_text("translate this\n")
    proc = cli_in_process(
        "distill",
        "--teacher",
        seq2seq / "t5",
        "--student-layers",
        "1",
        *t5_data(seq2seq),
        *[str(unlabeled) if a == "UNLABELED" else a for a in args],
        "--epochs",
        "1",
        "--out",
        tmp_path / "s",
    )
    assert_user_error(proc, needle, "token-level Hinton KD", "classifiers")
    assert not (tmp_path / "s").exists()


def test_augmented_copies_join_the_transfer_set_for_the_kd_term_only(tmp_path, teacher, question_files, cache_env):
    """--augment 2: two perturbed copies of each of the 255 labelled texts, labelled by the teacher (cached
    like the rest), in the transfer set; the labels-only baseline sees the labelled texts alone."""
    out = tmp_path / "a"
    proc = cli_in_process(
        "distill", "--teacher", teacher, "--student-layers", "1", "--augment", "2", "--baseline", *FAST,
        "--out", out, env=cache_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = meta(out)
    assert m["metrics"]["transfer_examples"] == 3 * 255 and m["metrics"]["unlabeled_examples"] == 2 * 255
    assert m["config"]["augment"] == 2 and "augment: 2" in (out / "recipe.yaml").read_text()
    assert "+ 510 augmented copies of the labelled texts" in proc.stderr
    assert m["baseline_metrics"]["accuracy"] >= 0 and 0 <= m["metrics"]["accuracy"] <= 1
    tables = list(Path(cache_env["EDGEKIT_CACHE_DIR"], "transfer").glob("*.npz"))
    assert any(np.load(t)["logits"].shape[0] == 765 for t in tables)  # the teacher labelled every copy


def test_augmenting_images_is_one_line(tmp_path):
    images = ["distill", "--teacher", "resnet18", "--student", "mobilenet_v2", "--dataset", "digits"]
    proc = cli_in_process(*images, "--augment", "1", "--out", tmp_path / "s")
    assert_user_error(proc, "--augment 1", "image-classification", "--unlabeled")
    assert not (tmp_path / "s").exists()
    assert_user_error(cli_in_process(*images, "--augment", "-1", "--out", tmp_path / "s"), "distill.augment")


def test_rouge_l_and_bleu_on_known_cases():
    from edgekit.metrics import generation_metrics, rouge_l

    assert rouge_l("the cat sat", "the cat sat") == 1.0
    # LCS("a b c d", "a c d e") = 3: precision 3/4, recall 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("x y", "a b") == 0.0
    perfect = generation_metrics(["the quick brown fox jumps"], ["the quick brown fox jumps"])
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["exact_match"] == 1.0


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--strategy", "fastest", "--student-layers", "1"], ["distill.strategy", "fastest", "successive"]),
        (["--strategy", "multi-teacher", "--student-layers", "1"], ["two or more teachers"]),
        (["--strategy", "successive"], ["--student-layers"]),
        (["--strategy", "successive", "--student-layers", "1,3"], ["fewer layers"]),
        (["--student-layers", "9"], ["teacher has 4 layers"]),
        (["--strategy", "self-quantized", "--set", "distill.lora.target_modules=[nope]"], ["nope", "not found"]),
        (["--student-layers", "1", "--teacher-weights", "0.5,0.5"], ["multi-teacher"]),
    ],
)
def test_bad_distill_settings(tmp_path, teacher, args, needles):
    proc = cli_in_process("distill", "--teacher", teacher, *args, "--epochs", "1", "--out", tmp_path / "s")
    assert_user_error(proc, *needles)
    assert not (tmp_path / "s").exists()


def test_teacher_weights_must_match_the_teachers(tmp_path, teacher):
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--teacher",
        teacher,
        "--strategy",
        "multi-teacher",
        "--teacher-weights",
        "1,2,3",
        "--student-layers",
        "1",
        "--out",
        tmp_path / "s",
    )
    assert_user_error(proc, "3 values for 2 teachers")


def test_teacher_trained_on_other_labels(tmp_path, teacher):
    other = write_questions(tmp_path / "two.tsv", 60, 3, labels=("HUM", "LOC"))
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--train",
        other,
        "--epochs",
        "1",
        "--out",
        tmp_path / "s",
    )
    assert_user_error(proc, "labels")


def test_student_layers_need_a_transformer_teacher(tmp_path):
    proc = cli_in_process(
        "distill",
        "--teacher",
        "resnet18",
        "--student-layers",
        "1",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--out",
        tmp_path / "s",
    )
    assert_user_error(proc, "transformer teacher")


def test_resume_without_a_checkpoint(tmp_path, teacher):
    proc = cli_in_process("distill", "--teacher", teacher, "--student-layers", "1", "--resume", "--out", tmp_path / "s")
    assert_user_error(proc, "nothing to resume")


def _awkward_texts(path: Path, n: int, seed: int) -> Path:
    """JSONL of questions made long (> 255 bytes), multi-line, or shaped like file paths, as real corpora have."""
    import random

    rng = random.Random(seed)
    rows = []
    for i, line in enumerate(write_questions(path.with_suffix(".tsv"), n, seed).read_text().splitlines()[1:]):
        label, text = line.split("\t", 1)
        kind = i % 4
        if kind == 0:
            text = (text + " and then, thinking about it for a long while, ") * 8 + "?"  # ~400+ bytes
        elif kind == 1:
            text = text.replace(" ", "\n", 2) + "\n\nsecond paragraph"
        elif kind == 2:
            text = rng.choice(["/etc/passwd", "../../etc/hosts", "C:\\temp\\x.png", "./" + text.replace(" ", "/")])
        rows.append(json.dumps({"text": text, "label": label}))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_long_multiline_and_path_like_texts_go_through_every_command(tmp_path, teacher, cache_env):
    train, test = _awkward_texts(tmp_path / "train.jsonl", 120, 5), _awkward_texts(tmp_path / "test.jsonl", 40, 6)
    assert max(len(json.loads(r)["text"].encode()) for r in train.read_text().splitlines()) > 255
    student = tmp_path / "s"
    proc = cli_in_process(
        "distill",
        "--teacher",
        teacher,
        "--student-layers",
        "1",
        "--epochs",
        "1",
        "--train",
        train,
        "--test",
        test,
        "--out",
        student,
        env=cache_env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp_path / "b"
    proc = cli_in_process("export", student, "--fp32", "--out", bundle, env=cache_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = cli_in_process("eval", bundle, "--data", test, "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["examples"] == 40
    proc = cli_in_process("bench", bundle, "--data", test, "--runs", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
