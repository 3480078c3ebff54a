"""ExecuTorch bundles (.pte with XNNPACK), vision: int8 (and through it fp32) of a tiny ViT, ResNet-18 and
MobileNetV2, parity and the runtime, bench of an image bundle, an operator ExecuTorch lacks, presets."""

from __future__ import annotations

import json

import pytest
from pte_checks import check_pte_bundle, export_pte
from test_export import models  # noqa: F401 - the same tiny model stages as the other formats

from conftest import run_cli

# An int8 export writes and parity-checks the fp32 program first, so each int8 case checks fp32 too;
# lowering takes tens of seconds per program, so one transformer (dynamic int8) and one CNN (static,
# calibrated int8) stand for the vision models. ResNet-18 is lowered in the unsupported-operator test.
CASES = [
    ("vit", "int8", None),
    ("mobilenet_v2", "int8", None),
]


@pytest.mark.parametrize("model,precision,mode", CASES, ids=[f"{m}-{p}" + (f"-{q}" if q else "") for m, p, q in CASES])
def test_executorch_export_parity_and_runtime(models, model, precision, mode):  # noqa: F811
    check_pte_bundle(models, model, precision, mode)


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
    image = export_pte(models, "mobilenet_v2", "int8")
    proc = run_cli("bench", image, "--runs", "10", "--json", tmp_path / "m.json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["latency_ms"]["p50"] > 0
