"""ExecuTorch bundles (.pte with XNNPACK), text: fp32 and int8 of a tiny BERT and int8 T5, parity, eval
and bench of the file with ExecuTorch's runtime, and the errors a user meets (corrupt file, no runtime)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export import models  # noqa: F401 - the same tiny model stages as the other formats

from conftest import assert_user_error, run_cli

CASES = [
    ("bert", "fp32", None),
    ("bert", "int8", None),
]


_BUILT: dict[tuple, object] = {}


def _export(models, model: str, precision: str, mode: str | None = None):  # noqa: F811
    """One .pte bundle per case, exported once per module (lowering takes tens of seconds)."""
    from edgekit import stages

    key = (model, precision, mode)
    if key not in _BUILT:
        out = models["root"] / "pte" / "-".join(filter(None, key))
        stages.export(
            str(models[model]),
            out,
            preset_name=None,
            precision=precision,
            fmt="executorch",
            mode=mode,
            allow_drop=True,
            calib_samples=64,  # static CNN int8: calibration batches run through the observed graph
        )
        _BUILT[key] = out
    return _BUILT[key]


@pytest.mark.parametrize("model,precision,mode", CASES, ids=[f"{m}-{p}" + (f"-{q}" if q else "") for m, p, q in CASES])
def test_executorch_export_parity_and_runtime(models, model, precision, mode):  # noqa: F811
    from edgekit.artifacts import sha256_file
    from edgekit.runtime import Bundle

    out = _export(models, model, precision, mode)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "executorch" and manifest["precision"] == precision
    assert manifest["versions"]["executorch"] == "1.5.1"
    assert manifest["preprocessing"]["max_batch"] >= 1
    names = [g["name"] for g in manifest["graphs"]]
    assert names == (["encoder", "decoder"] if model == "t5" else ["model"])
    for graph in manifest["graphs"]:
        assert graph["file"].endswith(".pte") and sha256_file(out / graph["file"]) == graph["sha256"]
        programs = manifest["executorch"][graph["name"]]
        assert programs["delegates"] == ["XnnpackBackend"] and programs["delegated_subgraphs"] >= 1
    assert manifest["parity"]["fp32"]["passed"], manifest["parity"]["fp32"]
    if precision == "int8":
        quant = manifest["quantization"]
        cnn = model in ("resnet18", "mobilenet_v2")
        assert quant["mode"] == (mode or ("static" if cnn else "dynamic"))
        lossy = manifest["parity"]["int8"]
        assert lossy["examples"] > 0 and np.isfinite(lossy["snr_db"])
        if model in ("bert", "vit"):  # untrained CNN/T5 logits are near ties; trained ones are held in the benchmark
            assert lossy["passed"], lossy
        assert manifest["sizes"]["model_bytes"] < manifest["sizes"]["fp32_model_bytes"]
        if model in ("bert", "t5"):  # word (and position) embeddings are int8 rows
            assert quant["quantized_embeddings"] >= 1
            ops = {op for p in manifest["executorch"].values() for op in p["portable_operators"]}
            assert "quantized_decomposed::embedding_byte.dtype_out" in ops
    bundle = Bundle(out)
    assert bundle.session.get_providers()[0].startswith("ExecuTorch 1.5.1 (XNNPACK")
    if model == "t5":
        texts = bundle.generate(["paris rome moon", "radio river"], max_new_tokens=4)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    elif model == "bert":
        # a batch larger than the program's planned maximum runs in slices, same logits as one by one
        texts = [f"who wrote hamlet number {i} ?" for i in range(manifest["preprocessing"]["max_batch"] + 3)]
        many = bundle.run(bundle.encode(texts))
        assert many.shape == (len(texts), 3)
        single = np.concatenate([bundle.run(bundle.encode([t])) for t in texts[:2]])
        assert np.allclose(many[:2], single, atol=1e-4)
    else:
        image = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
        assert bundle.predict([image, image]).shape == (2, 10)


def test_eval_and_bench_of_a_pte_bundle_run_on_executorch(models, tmp_path):  # noqa: F811
    bundle = _export(models, "bert", "int8")
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
    shutil.copytree(_export(models, "bert", "fp32"), bundle)
    (bundle / "model.pte").write_bytes(b"not a program" * 100)
    proc = run_cli("bench", bundle, "--runs", "5")
    assert_user_error(proc, "model.pte", "export")  # the checksum no longer matches
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["sha256"] = manifest["graphs"][0]["sha256"] = sha256_file(bundle / "model.pte")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = run_cli("eval", bundle, "--data", models["root"] / "test.tsv")
    assert_user_error(proc, "ExecuTorch cannot load", "corrupt")


def test_without_the_runtime_the_bench_names_the_package(models, tmp_path, block_torch):  # noqa: F811
    proc = run_cli("bench", _export(models, "bert", "fp32"), "--runs", "5", env=block_torch)
    line = assert_user_error(proc, "pip install executorch")
    assert "onnx" in line.lower()
