"""The device path stays light: importing it never imports torch."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

DEVICE_MODULES = [
    "edgekit",
    "edgekit.cli.main",
    "edgekit.cli.app",
    "edgekit.runtime",
    "edgekit.bench.run",
    "edgekit.bench.worker",
    "edgekit.bench.profiles",
    "edgekit.metrics",
    "edgekit.data.splits",
    "edgekit.stages",
    "edgekit.pipeline",
    "edgekit.report",
]


def test_device_path_imports_no_torch():
    code = (
        f"import importlib, sys, json\nfor m in {DEVICE_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in ('torch', 'torchvision', 'transformers', 'peft') if k in sys.modules)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_help_and_devices_work_without_torch(block_torch):
    from conftest import run_cli

    assert run_cli("--help", env=block_torch).returncode == 0
    proc = run_cli("devices", "list", env=block_torch)
    assert proc.returncode == 0 and "rpi4" in proc.stdout


def test_shipped_profiles_and_presets_load():
    from edgekit.bench.profiles import list_profiles, load_profile
    from edgekit.export.presets import load_preset
    from edgekit.resources import list_named

    assert {"cpu", "rpi4", "rpi5", "t4"} <= set(list_profiles())
    for name in list_profiles():
        assert load_profile(name).providers
    for name in list_named("export"):
        preset = load_preset(name)
        assert preset.format in __import__("edgekit.registry").registry.names("format")
        assert preset.precision in ("int8", "int4", "fp16", "fp32")
        if preset.precision == "int8":
            assert preset.quantization["mode"] in ("auto", "dynamic", "static")


def test_unknown_profile_setting_is_rejected(tmp_path):
    from edgekit.bench.profiles import load_profile
    from edgekit.errors import EdgekitError

    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nthreds: 2\n")
    with pytest.raises(EdgekitError, match="unknown settings threds"):
        load_profile(str(path))
