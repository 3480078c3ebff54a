"""Text: finetune -> distill -> int8 export -> torch-free eval, on a tiny BERT built from a config."""

import json

import pytest

from conftest import assert_user_error, cli_in_process, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def text_stages(tmp_path_factory, tiny_bert, question_files):
    root = tmp_path_factory.mktemp("text")
    common = ["--train", question_files["train"], "--test", question_files["test"]]
    teacher = cli_in_process(
        "finetune",
        tiny_bert,
        *common,
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--out",
        root / "teacher",
        "--write-recipe",
        root / "teacher.yaml",
    )
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    student = cli_in_process(
        "distill",
        "--teacher",
        root / "teacher",
        "--student",
        tiny_bert,
        "--temperature",
        "4",
        "--alpha",
        "0.5",
        "--epochs",
        "20",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--out",
        root / "student",
    )
    assert student.returncode == 0, student.stderr[-3000:]
    workdir = root / "cwd"
    workdir.mkdir()
    export = run_cli("export", root / "student", "--int8", "--out", root / "bundle", cwd=workdir)
    assert export.returncode == 0, export.stderr[-3000:]
    # quantization temporaries (sym_shape_infer_temp.onnx, *.data) must not land in the working directory
    assert list(workdir.iterdir()) == []
    return root


def test_teacher_learns_the_task(text_stages):
    meta = json.loads((text_stages / "teacher" / "meta.json").read_text())
    assert meta["metrics"]["accuracy"] > 0.8 and meta["metrics"]["split"] == "test"
    assert meta["metrics"]["labels"] == ["HUM", "LOC", "NUM"]
    assert (text_stages / "teacher" / "model" / "model.safetensors").is_file()
    assert (text_stages / "teacher.yaml").is_file()


def test_student_records_its_teacher(text_stages):
    meta = json.loads((text_stages / "student" / "meta.json").read_text())
    assert meta["config"]["temperature"] == 4.0 and meta["config"]["alpha"] == 0.5
    assert meta["teacher"]["accuracy"] > 0.8
    assert meta["parent"]["stage"] == "finetune"
    assert meta["metrics"]["accuracy"] > 0.6


def test_bundle_is_dynamic_int8_with_tokenizer(text_stages):
    bundle = text_stages / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "dynamic"
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["inputs"][0]["shape"] == ["batch", "sequence"]
    assert (bundle / "tokenizer.json").is_file()
    assert manifest["parity"]["int8"]["label_agreement"] >= 0.97
    assert [step["stage"] for step in manifest["lineage"]] == ["distill", "finetune"]
    assert manifest["sizes"]["model_bytes"] < manifest["sizes"]["fp32_model_bytes"] / 2


def test_eval_of_the_exported_file_matches_the_student(text_stages, question_files, block_torch, tmp_path):
    proc = run_cli(
        "eval", text_stages / "bundle", "--data", question_files["test"], "--json", tmp_path / "m.json", env=block_torch
    )
    assert proc.returncode == 0, proc.stderr
    exported = json.loads((tmp_path / "m.json").read_text())
    student = json.loads((text_stages / "student" / "meta.json").read_text())["metrics"]
    assert exported["examples"] == student["examples"] == 90
    assert abs(exported["accuracy"] - student["accuracy"]) <= 0.03


def test_bench_with_real_sentences(text_stages, question_files, tmp_path, block_torch):
    proc = run_cli(
        "bench",
        text_stages / "bundle",
        "--data",
        question_files["test"],
        "--runs",
        "20",
        "--json",
        tmp_path / "b.json",
        env=block_torch,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["inputs"] == "real" and result["latency_ms"]["p50"] > 0


def test_prune_l1_unstructured(text_stages):
    out = text_stages / "pruned"
    proc = cli_in_process("prune", text_stages / "student", "--amount", "0.3", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metrics"]["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert all(s == pytest.approx(0.3, abs=0.01) for s in meta["metrics"]["layer_sparsity"].values())
    assert meta["parent"]["stage"] == "distill"


def test_export_refuses_existing_output(text_stages):
    proc = cli_in_process("export", text_stages / "student", "--out", text_stages / "bundle")
    assert proc.returncode != 0 and "already exists; pass --force" in proc.stderr


def test_parity_failure_leaves_no_bundle_unless_allowed(text_stages, tmp_path):
    preset = tmp_path / "strict.yaml"
    preset.write_text("name: strict\nquantization: {mode: dynamic}\nparity: {min_agreement: 1.0, min_snr_db: 200}\n")
    proc = cli_in_process("export", text_stages / "student", "--preset", preset, "--out", tmp_path / "b")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "int8 ONNX fails parity" in proc.stderr and "no bundle written" in proc.stderr
    assert not (tmp_path / "b").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["strict.yaml"]
    kept = cli_in_process(
        "export", text_stages / "student", "--preset", preset, "--allow-drop", "--out", tmp_path / "b"
    )
    assert kept.returncode == 0, kept.stderr[-2000:]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity"]["int8"]["passed"] is False and manifest["preset"] == "strict"


def test_corrupt_model_file_is_a_clear_error(text_stages, tmp_path, question_files):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(text_stages / "bundle", bundle)
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) // 3])
    proc = cli_in_process("bench", bundle, "--runs", "5", "--json", tmp_path / "b.json")
    assert_user_error(proc, "could not be measured", "does not match the sha256", "truncated")
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["valid"] is False and "error" in result["results"][0]
    assert_user_error(cli_in_process("eval", bundle, "--data", question_files["test"]), "does not match the sha256")
    # deleting the recorded hashes does not skip the check: a bundle without them is refused
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"] = None
    for graph in manifest["graphs"]:
        graph["sha256"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(
        cli_in_process("eval", bundle, "--data", question_files["test"]), "has no sha256", "export it again"
    )
    assert_user_error(cli_in_process("eval", bundle, "--data", text_stages / "missing.tsv"), "does not exist")
