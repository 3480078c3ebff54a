"""ExecuTorch bundles (.pte with XNNPACK), text: int8 (and through it fp32) of a tiny BERT, parity, eval
and bench of the file with ExecuTorch's runtime, and the errors a user meets (corrupt file, no runtime)."""

from __future__ import annotations

import json

import pytest
from pte_checks import check_pte_bundle, export_pte
from test_export import models  # noqa: F401 - the same tiny model stages as the other formats

from conftest import assert_user_error, cli_in_process, run_cli

# The int8 export writes and parity-checks the fp32 program first (manifest parity.fp32), so one
# int8 bundle covers both programs; every test below reuses it (lowering takes tens of seconds).
CASES = [
    ("bert", "int8", None),
    ("t5", "fp32", None),  # encoder and decoder programs (no KV cache); int8 lowers both twice (~2.5 min)
]


@pytest.mark.parametrize("model,precision,mode", CASES, ids=[f"{m}-{p}" + (f"-{q}" if q else "") for m, p, q in CASES])
def test_executorch_export_parity_and_runtime(models, model, precision, mode):  # noqa: F811
    check_pte_bundle(models, model, precision, mode)


def test_eval_and_bench_of_a_pte_bundle_run_on_executorch(models, tmp_path):  # noqa: F811
    bundle = export_pte(models, "bert", "int8")
    out = tmp_path / "eval"
    proc = run_cli("eval", bundle, "--data", models["root"] / "test.tsv", "--out", out, "--json", tmp_path / "e.json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert metrics["examples"] == 60 and 0 <= metrics["accuracy"] <= 1
    assert "accuracy" in proc.stdout and "%" in proc.stdout
    proc = run_cli(
        "bench", bundle, "--runs", "20", "--batch-size", "1", "--batch-size", "40", "--json", tmp_path / "b.json"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["format"] == "executorch" and result["precision"] == "int8"
    assert result["providers"][0].startswith("ExecuTorch 1.5.1 (XNNPACK") and "loads torch" in result["providers"][0]
    assert result["latency_ms"]["p50"] > 0 and result["peak_rss_bytes"] > 100e6  # torch is loaded: said, and counted
    assert set(result["throughput"]) == {"1", "40"}  # 40 > the planned batch: run in slices


def test_a_corrupt_pte_is_one_line(models, tmp_path):  # noqa: F811
    import shutil

    from edgekit.artifacts import sha256_file

    bundle = tmp_path / "b"
    shutil.copytree(export_pte(models, "bert", "int8"), bundle)
    (bundle / "model.pte").write_bytes(b"not a program" * 100)
    proc = cli_in_process("bench", bundle, "--runs", "5")
    assert_user_error(proc, "model.pte", "export")  # the checksum no longer matches
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"] = manifest["graphs"][0]["sha256"] = sha256_file(bundle / "model.pte")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = cli_in_process("eval", bundle, "--data", models["root"] / "test.tsv")
    assert_user_error(proc, "ExecuTorch cannot load", "corrupt")


def test_without_the_runtime_the_bench_names_the_package(models, tmp_path, block_torch):  # noqa: F811
    proc = run_cli("bench", export_pte(models, "bert", "int8"), "--runs", "5", env=block_torch)
    line = assert_user_error(proc, "pip install executorch")
    assert "onnx" in line.lower()


def test_a_recipe_ships_a_pte_bundle_and_the_report_puts_formats_side_by_side(
    tmp_path, minilm_tokenizer_dir, question_files
):
    """`edgekit run` with export.format executorch: teacher -> student -> .pte bundle, evaluated and benched;
    the same recipe as ONNX in a second run folder; `edgekit report` of both: one table, both runtimes."""
    import yaml

    from conftest import save_tiny_bert

    teacher = save_tiny_bert(tmp_path / "teacher-src", minilm_tokenizer_dir, hidden=32, layers=2)
    recipe = {
        "name": "pte",
        "task": "text-classification",
        "data": {"train": str(question_files["train"]), "test": str(question_files["test"]), "max_length": 32},
        "teacher": {"model": str(teacher), "train": {"epochs": 1, "batch_size": 32, "lr": 1e-3}},
        "student": {"layers": [1]},
        "distill": {"train": {"epochs": 1, "batch_size": 32, "lr": 1e-3}},
        "export": {"format": "executorch", "precision": "int8"},
        "bench": {"devices": ["cpu"], "runs": 20},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {"EDGEKIT_CACHE_DIR": str(tmp_path / "cache")}
    pte_run, onnx_run = tmp_path / "run-pte", tmp_path / "run-onnx"
    proc = run_cli("run", path, "--out", pte_run, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((pte_run / "export" / "manifest.json").read_text())
    assert manifest["format"] == "executorch" and (pte_run / "export" / "model.pte").is_file()
    # max_length 32: the program indexes 32 of the tiny BERT's 128 position rows, and keeps only those
    assert manifest["quantization"]["position_rows_kept"] == {"bert.embeddings.position_embeddings": 32}
    assert not list((pte_run / "export").glob("*.onnx"))
    # synthetic inputs no longer than the bundle's max_length (32): the program is planned for those
    bench = json.loads((pte_run / "bench-cpu" / "bench.json").read_text())["results"][0]
    assert bench["valid"] and bench["sequence_length"] == 32 and bench["latency_ms"]["p50"] > 0
    proc = run_cli("run", path, "--out", onnx_run, "--set", "export.format=onnx", env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("report", pte_run, onnx_run, "--out", tmp_path / "both")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "both" / "report.json").read_text())
    exported = {r["run"]: r for r in report["rows"] if r["stage"] == "export"}
    assert exported["run-pte"]["runtime"] == "executorch int8 dynamic", exported
    assert exported["run-pte"]["model"].endswith(".pte") and exported["run-onnx"]["model"].endswith(".onnx")
    assert exported["run-onnx"]["runtime"].startswith("onnxruntime int8")
    for row in exported.values():  # each bundle evaluated and measured by its own runtime
        assert 0 <= row["accuracy"] <= 1 and row["p50_ms"] > 0 and row["size_mb"] > 0
    text = (tmp_path / "both" / "report.md").read_text()
    assert "executorch int8" in text and "onnxruntime int8" in text


def test_a_bench_that_cannot_run_the_bundle_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """No empty bench stage is kept (a re-run would reuse it and never measure): one clear error instead."""
    import edgekit.bench.run
    from edgekit.errors import EdgekitError
    from edgekit.pipeline import bench_stage
    from edgekit.recipe import Recipe

    failed = {"results": [{"name": "export", "valid": False, "error": "ExecuTorch could not run the program"}]}
    monkeypatch.setattr(edgekit.bench.run, "bench_bundles", lambda *a, **k: failed)
    (tmp_path / "export").mkdir()
    with pytest.raises(EdgekitError, match="bench on cpu could not run .*ExecuTorch could not run the program"):
        bench_stage(tmp_path / "export", tmp_path / "bench-cpu", "cpu", Recipe(), reuse=True)
    assert not (tmp_path / "bench-cpu").exists()
