"""ExecuTorch bundles (.pte with XNNPACK), vision: int8 (and through it fp32) of a tiny ViT, ResNet-18 and
MobileNetV2, parity and the runtime, bench of an image bundle, an operator ExecuTorch lacks, presets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export import models  # noqa: F401 - the same tiny model stages as the other formats

from conftest import run_cli

# An int8 export writes and parity-checks the fp32 program first, so each int8 case checks fp32 too
# (bert-fp32 in test_executorch_text.py ships one); lowering takes tens of seconds per program.
CASES = [
    ("vit", "int8", None),
    ("resnet18", "int8", None),
    ("mobilenet_v2", "int8", None),
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
        if cnn:  # calibrated on the training images; the convolution reading the image stays fp32
            assert quant["calibration_batches"] >= 1 and quant["first_conv_fp32"]
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


def test_an_operator_executorch_lacks_is_named_and_no_bundle_is_left(models, tmp_path, monkeypatch):  # noqa: F811
    import torch

    from edgekit import stages
    from edgekit.errors import EdgekitError
    from edgekit.export import executorch

    class WithCummax(torch.nn.Module):  # a model whose forward ends in an op outside core ATen
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return torch.cummax(self.inner(*args), dim=-1)[0]

    plain = executorch._program_module
    monkeypatch.setattr(executorch, "_program_module", lambda graph, handle: WithCummax(plain(graph, handle)))
    out = tmp_path / "bundle"
    with pytest.raises(EdgekitError, match=r"operator aten\.cummax\.default is not in the core ATen"):
        stages.export(str(models["resnet18"]), out, preset_name=None, precision="fp32", fmt="executorch")
    assert not out.exists() and not list(tmp_path.glob("bundle*"))


def test_executorch_presets_and_choices():
    from edgekit.errors import EdgekitError
    from edgekit.export.presets import load_preset

    assert load_preset(None, "executorch", "int8").name == "executorch-xnnpack-int8"
    assert load_preset(None, "executorch", "fp32").name == "executorch-fp32"
    arm = load_preset("executorch-arm64-int8")
    assert arm.format == "executorch" and arm.target_machine == "aarch64"
    with pytest.raises(EdgekitError, match="(?i)executorch export has no fp16 mode"):
        load_preset(None, "executorch", "fp16")
    proc = run_cli("export", "--help", env={"COLUMNS": "200"})
    assert "executorch" in proc.stdout


def test_bench_of_an_image_pte_bundle(models, tmp_path):  # noqa: F811
    image = _export(models, "mobilenet_v2", "int8")
    proc = run_cli("bench", image, "--runs", "10", "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["latency_ms"]["p50"] > 0
