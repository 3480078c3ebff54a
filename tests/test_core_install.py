"""A real core-only install (what a Raspberry Pi gets from pip install edgekit): no torch, no scikit-learn,
no matplotlib. Commands that need more name the extra in one line; device-side commands work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, assert_user_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    venv = tmp_path_factory.mktemp("core-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    proc = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(REPO)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"


def _run(core, *args, cwd=None):
    return subprocess.run(
        [str(core / "edgekit"), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_the_core_install_has_no_training_packages(core):
    code = "import importlib.util as u, json; print(json.dumps([m for m in ('torch', 'sklearn', 'matplotlib', 'transformers') if u.find_spec(m)]))"
    proc = subprocess.run([str(core / "python"), "-c", code], capture_output=True, text=True)
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(
    "args, extra",
    [
        (["export", "runs/student", "--out", "b"], "train"),
        (["finetune", "resnet18", "--dataset", "digits", "--out", "t"], "train"),
        (["distill", "--teacher", "t", "--student-layers", "1", "--out", "s"], "train"),
        (["prune", "s", "--out", "p"], "train"),
        (["run"], "train"),
        (["report", "runs/x"], "report"),
    ],
)
def test_commands_that_need_an_extra_say_which(core, tmp_path, args, extra):
    proc = _run(core, *args, cwd=tmp_path)
    line = assert_user_error(proc, f"edgekit {args[0]} needs the {extra} extra", f"pip install 'edgekit[{extra}]'")
    assert "internal error" not in line and len(line) < 300
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_still_works_for_those_commands(core):
    proc = _run(core, "export", "--help")
    assert proc.returncode == 0 and "--preset" in proc.stdout


def test_digits_without_scikit_learn_says_how_to_get_it(core, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(
        json.dumps(
            {
                "task": "image-classification",
                "label_names": [str(i) for i in range(10)],
                "preprocessing": {"image_size": 8},
                "inputs": [{"name": "pixel_values"}],
            }
        )
    )
    proc = _run(core, "eval", bundle, "--dataset", "digits")
    assert_user_error(proc, "scikit-learn", "pip install scikit-learn")


def test_device_commands_run_on_the_core_install(core):
    proc = _run(core, "devices", "here", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["onnxruntime"]
    assert _run(core, "devices", "show", "rpi4").returncode == 0
