"""The README's main job: `edgekit run` on the embedded digits recipe, end to end, for real."""

import json
import os
import subprocess
import sys

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    proc = run_cli("run", "--out", out, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


pytestmark = pytest.mark.slow


def test_leaves_report_plot_and_int8_onnx(default_run):
    out, proc = default_run
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert (out / "accuracy_size_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["quantization"]["mode"] == "static"
    assert manifest["parity"]["int8"]["passed"] and manifest["parity"]["fp32"]["passed"]
    import onnx

    model = onnx.load(str(out / "export" / "model.onnx"))
    assert any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)
    assert manifest["sizes"]["model_bytes"] < 0.4 * manifest["sizes"]["fp32_model_bytes"]
    for header in ("accuracy (%)", "params (M)", "size (MB)", "p50 (ms)"):
        assert header in proc.stdout


def test_int8_accuracy_within_one_point_of_student(default_run):
    out, _ = default_run
    student = json.loads((out / "student" / "meta.json").read_text())["metrics"]
    exported = json.loads((out / "eval" / "meta.json").read_text())["metrics"]
    assert student["split"] == exported["split"] == "test"
    assert student["examples"] == exported["examples"] == 359  # 20% of 1,797, stratified per class
    assert abs(student["accuracy"] - exported["accuracy"]) <= 0.01
    assert exported["accuracy"] > 0.85  # a real model, not chance (0.10)
    teacher = json.loads((out / "teacher" / "meta.json").read_text())["metrics"]
    assert teacher["accuracy"] > 0.9


def test_meta_json_of_every_stage(default_run):
    out, _ = default_run
    for stage in ("teacher", "student", "export", "eval", "bench-cpu"):
        meta = json.loads((out / stage / "meta.json").read_text())
        assert meta["producer"]["tool"] == "edgekit" and meta["fingerprint"]
        assert all(len(f["sha256"]) == 64 for f in meta["files"].values())
        assert 0 <= meta["metrics"].get("accuracy", 0) <= 1
    assert json.loads((out / "student" / "meta.json").read_text())["parent"]["stage"] == "finetune"
    assert (out / "student" / "recipe.yaml").is_file() and (out / "recipe.yaml").is_file()
    bench = json.loads((out / "bench-cpu" / "bench.json").read_text())
    result = bench["results"][0]
    assert result["valid"] and result["latency_ms"]["p50"] > 0 and result["peak_rss_mb"] > 0


def test_report_json_rows(default_run):
    out, _ = default_run
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["teacher", "student", "export"]
    assert rows[2]["size_mb"] < rows[1]["size_mb"] < rows[0]["size_mb"]
    assert rows[2]["p50_ms"] > 0 and rows[2]["device"] == "cpu"


def test_second_run_reuses_unchanged_stages(default_run):
    out, _ = default_run
    before = json.loads((out / "student" / "meta.json").read_text())["producer"]["created"]
    proc = run_cli("run", "--out", out, "--set", "bench.runs=20")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "finetune: reused" in proc.stderr and "distill: reused" in proc.stderr and "export: reused" in proc.stderr
    assert json.loads((out / "student" / "meta.json").read_text())["producer"]["created"] == before


def test_eval_cli_on_the_bundle(default_run, tmp_path):
    out, _ = default_run
    proc = run_cli(
        "eval", out / "export", "--dataset", "digits", "--json", tmp_path / "m.json", "--out", tmp_path / "ev"
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    recorded = json.loads((out / "eval" / "meta.json").read_text())["metrics"]
    assert metrics["accuracy"] == recorded["accuracy"] and metrics["confusion_matrix"] == recorded["confusion_matrix"]
    assert "accuracy" in proc.stdout and "%" in proc.stdout


def test_bench_and_eval_run_where_torch_cannot_be_imported(default_run, tmp_path, block_torch):
    out, _ = default_run
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env={**os.environ, **block_torch}, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "blocked" in probe.stderr
    proc = run_cli(
        "bench", out / "export", "--device", "cpu", "--json", tmp_path / "b.json", "--runs", "30", env=block_torch
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    for key in ("device", "valid", "size_mb", "peak_rss_mb", "latency_ms", "schema_version"):
        assert key in result
    assert set(result["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
    assert result["device"] == "cpu"
    ev = run_cli("eval", out / "export", "--dataset", "digits", env=block_torch)
    assert ev.returncode == 0, ev.stderr
    assert "accuracy" in ev.stdout


def test_lora_and_pruning_stages_chain_after_the_student(default_run):
    """Last in this file: it changes the run (the export now comes from the pruned model)."""
    out, _ = default_run
    proc = run_cli(
        "run",
        "--out",
        out,
        "--set",
        "lora.enabled=true",
        "--set",
        "lora.train.epochs=1",
        "--set",
        "prune.method=channels",
        "--set",
        "prune.amount=0.25",
        "--set",
        "bench.runs=20",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finetune: reused" in proc.stderr and "distill: reused" in proc.stderr
    lora = json.loads((out / "lora" / "meta.json").read_text())
    pruned = json.loads((out / "pruned" / "meta.json").read_text())
    assert lora["stage"] == "lora" and lora["parent"]["stage"] == "distill"
    assert lora["merge"]["label_agreement"] == 1.0
    assert pruned["parent"]["stage"] == "lora" and pruned["parameters"] < lora["parameters"]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["parameters"] == pruned["parameters"]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["teacher", "student", "lora", "pruned", "export"]


def test_the_readme_int8_vs_fp32_benchmark_runs_on_the_default_run(default_run, tmp_path):
    """README: `python benchmarks/int8_vs_fp32.py runs/digits-resnet18-mobilenetv2` (it once called a
    removed export argument and no test noticed)."""
    from conftest import REPO

    run_dir, _ = default_run
    out = tmp_path / "ratios.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "int8_vs_fp32.py"), str(run_dir), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert summary["int8_size_ratio"] < 0.5 and summary["p50_ms"]["int8"] > 0
    assert set(summary["accuracy"]) == {"fp32", "int8"} and "x faster (p50)" in proc.stdout
