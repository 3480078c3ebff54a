"""ExecuTorch bundles (.pte with XNNPACK), text: int8 (and through it fp32) of a tiny BERT, parity, eval
and bench of the file with ExecuTorch's runtime, and the errors a user meets (corrupt file, no runtime)."""

from __future__ import annotations

import json

import pytest
from pte_checks import check_pte_bundle, export_pte
from test_export import models  # noqa: F401 - the same tiny model stages as the other formats

from conftest import assert_user_error, run_cli

# The int8 export writes and parity-checks the fp32 program first (manifest parity.fp32), so one
# int8 bundle covers both programs; every test below reuses it (lowering takes tens of seconds).
CASES = [
    ("bert", "int8", None),
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
    proc = run_cli("bench", bundle, "--runs", "5")
    assert_user_error(proc, "model.pte", "export")  # the checksum no longer matches
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"] = manifest["graphs"][0]["sha256"] = sha256_file(bundle / "model.pte")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("eval", bundle, "--data", models["root"] / "test.tsv")
    assert_user_error(proc, "ExecuTorch cannot load", "corrupt")


def test_without_the_runtime_the_bench_names_the_package(models, tmp_path, block_torch):  # noqa: F811
    proc = run_cli("bench", export_pte(models, "bert", "int8"), "--runs", "5", env=block_torch)
    line = assert_user_error(proc, "pip install executorch")
    assert "onnx" in line.lower()
