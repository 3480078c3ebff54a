"""Local benchmark of a hand-built bundle: the harness, the JSON, several bundles, bad inputs."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, at_a_terminal, run_cli


def make_bundle(folder: Path, hidden: int = 64, classes: int = 3) -> Path:
    """A real ONNX classifier (Flatten -> Gemm -> Relu -> Gemm) over 3x8x8 images, with a manifest."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((3 * 8 * 8, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Flatten", ["pixel_values"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    manifest = {
        "schema_version": 1,
        "format": "onnx",
        "task": "image-classification",
        "label_names": ["a", "b", "c"],
        "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
        "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 8, 8]}],
        "parameters": int(3 * 64 * hidden + hidden * classes),
        "quantization": None,
        "sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest(),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture()
def bundles(tmp_path):
    return make_bundle(tmp_path / "small", hidden=16), make_bundle(tmp_path / "large", hidden=512)


def test_bench_json_fields(bundles, tmp_path, block_torch):
    proc = run_cli("bench", bundles[0], "--runs", "120", "--json", tmp_path / "b.json", env=block_torch)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["schema_version"] == 1 and result["device"] == "cpu" and result["valid"] is True
    assert result["runs"] >= 120 and result["invalid_reasons"] == []
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["size_mb"] == pytest.approx((bundles[0] / "model.onnx").stat().st_size / 1e6)
    assert 0 < result["compressed_size_mb"] <= result["size_mb"] * 1.1
    assert result["peak_rss_mb"] > 10 and result["load_ms"] > 0 and result["first_inference_ms"] > 0
    assert result["warmup"]["runs"] == 10
    from edgekit.artifacts import sha256_file

    assert result["model_sha256"] == sha256_file(bundles[0] / "model.onnx")
    env = result["environment"]
    assert env["cores_logical"] >= 1 and env["cpu_model"] and env["onnxruntime"]
    assert "| small | yes" in proc.stdout and "p50 (ms)" in proc.stdout


def test_too_few_runs_is_marked_invalid(bundles, tmp_path):
    proc = run_cli("bench", bundles[0], "--runs", "5", "--json", tmp_path / "b.json")
    assert proc.returncode == 0
    result = json.loads((tmp_path / "b.json").read_text())
    # the profile's min_seconds keeps the loop going past 5 runs, so check the rule directly too
    assert result["valid"] == (result["runs"] >= 100)


def test_several_bundles_give_one_table(bundles, tmp_path):
    proc = run_cli("bench", *bundles, "--runs", "30", "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in document["results"]] == ["small", "large"]
    assert document["results"][1]["size_mb"] > document["results"][0]["size_mb"]
    assert "| small |" in proc.stdout and "| large |" in proc.stdout


def test_custom_profile_file(bundles, tmp_path):
    profile = tmp_path / "tiny.yaml"
    sensor = tmp_path / "temp"
    sensor.write_text("48250\n")  # sysfs format: millidegrees Celsius
    profile.write_text(
        "name: tiny\nthreads: 1\nwarmup: 2\nruns: 10\nmin_seconds: 0\nbatch_sizes: [1, 4]\n"
        f"thermal_sensors: [{sensor}]\n"
    )
    proc = run_cli("bench", bundles[0], "--device", profile, "--json", tmp_path / "b.json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["device"] == "tiny" and result["threads"] == 1
    assert set(result["throughput"]) == {"1", "4"}
    assert result["throughput"]["4"]["items_per_second"] > 0
    assert result["environment"]["temperatures_c"][str(sensor)] == 48.25


@pytest.mark.parametrize("value, threads", [("3", 3), ("1", 1), ("0", 0), ("", 0), ("many", 0), ("-2", 0)])
def test_runtimes_take_omp_num_threads_when_no_count_is_asked(monkeypatch, value, threads):
    """onnxruntime ignores OMP_NUM_THREADS; edgekit passes it on, so its sessions use the cores PyTorch
    uses, and two jobs that split a machine do not spin on each other's (about 2x slower, measured)."""
    from edgekit.runtime.bundle import default_threads, session_options

    monkeypatch.setenv("OMP_NUM_THREADS", value)
    assert default_threads() == threads
    assert session_options().intra_op_num_threads == threads  # 0: onnxruntime's own default, every core
    assert session_options(threads=2).intra_op_num_threads == 2  # a count asked for wins


def test_unknown_device_and_missing_provider(bundles):
    assert_user_error(run_cli("bench", bundles[0], "--device", "rpi9"), "unknown device 'rpi9'")
    assert_user_error(run_cli("bench", bundles[0], "--device", "t4"), "CUDAExecutionProvider", "onnxruntime-gpu")


@pytest.mark.parametrize(
    "signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_during_bench_exits_with_its_code_and_one_line(bundles, tmp_path, signum, code, word):
    """Ctrl-C (or a SIGTERM from a scheduler) outside any training loop is not success."""
    out = tmp_path / "never.json"
    # batch 2048 of the large bundle: ~1 GFLOP a run, so the 100,000-run cap is far away when the signal comes
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "bench",
            str(bundles[1]),
            "--runs",
            "1000000",
            "--batch-size",
            "2048",
            "--json",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=at_a_terminal,
    )
    time.sleep(4)  # the worker is timing by now
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and word in errors[0]
    assert not out.exists()
