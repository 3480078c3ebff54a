"""The Raspberry Pi path on an emulated aarch64 target (Debian arm64 root, qemu-user, edgekit's core install).

Built once by 'edgekit devices emulate' into the user's cache (about 4-10 minutes on 2 cores, then reused).
Skipped, with the reason printed, where this machine cannot run aarch64 programs (not root, no
binfmt_misc); .ci/run installs qemu-user-static, binfmt-support and debootstrap.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import (
    REPO,
    USER_CACHE_DIR,
    assert_user_error,
    run_cli,
    save_tiny_bert,
    settle_batchnorm,
    write_questions,
    write_stage,
)

pytestmark = pytest.mark.slow

DIGITS = [str(i) for i in range(10)]
IMAGE_RECIPE = (
    "task: image-classification\ndata: {dataset: digits, image_size: 32}\nteacher: {model: x}\nstudent: {model: x}\n"
)
ENV = {"EDGEKIT_CACHE_DIR": USER_CACHE_DIR}


def _unavailable() -> str | None:
    from edgekit.emulate.rootfs import check_host
    from edgekit.errors import EdgekitError

    try:
        check_host()
    except EdgekitError as exc:
        return f"emulated aarch64 target unavailable here: {exc}"
    return None


@pytest.fixture(scope="module")
def emulated():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    proc = run_cli("devices", "emulate", "rpi4", env=ENV, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _digit_folder(folder: Path, per_class: int) -> Path:
    """The first ``per_class`` real digits of each class as an ImageFolder: every emulated inference costs
    tens of milliseconds under QEMU, so the device checks score 50 images rather than the 359 of the test split."""
    import numpy as np
    from PIL import Image

    from edgekit.data.images import digits_images

    images, names = digits_images()
    for label in DIGITS:
        (folder / label).mkdir(parents=True)
        for i, index in enumerate([j for j, name in enumerate(names) if name == label][:per_class]):
            Image.fromarray(images[index].astype(np.uint8)).save(folder / label / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def bundles(emulated, tmp_path_factory, minilm_tokenizer_dir):
    """Text (tiny BERT, dynamic int8) and vision (MobileNetV2, static int8) bundles exported with arm64-int8,
    whose parity is then judged on both emulated cores, and fp32 bundles of the same models."""
    import torch

    from edgekit.models import load_model

    root = tmp_path_factory.mktemp("emulated")
    write_questions(root / "train.tsv", 200, 1)
    write_questions(root / "test.tsv", 60, 2)
    save_tiny_bert(root / "bert-src", minilm_tokenizer_dir, hidden=32, layers=2)
    bert = load_model(str(root / "bert-src"), task="text-classification", label_names=["HUM", "LOC", "NUM"])
    stages = {
        "text": write_stage(
            root / "bert",
            bert,
            f"task: text-classification\ndata: {{train: {root}/train.tsv, "
            f"test: {root}/test.tsv}}\nteacher: {{model: x}}\nstudent: {{model: x}}\n",
        )
    }
    torch.manual_seed(0)
    cnn = load_model("mobilenet_v2", task="image-classification", label_names=DIGITS, image_size=32)
    settle_batchnorm(cnn.module)
    stages["vision"] = write_stage(root / "mobilenet", cnn, IMAGE_RECIPE)
    made = {"data": root / "test.tsv", "images": _digit_folder(root / "digits", 5)}
    for kind, stage in stages.items():
        for precision in ("int8", "fp32"):
            out = root / f"{kind}-{precision}"
            args = ["--preset", "arm64-int8"] if precision == "int8" else ["--fp32"]
            proc = run_cli("export", stage, *args, "--out", out, env=ENV)
            assert proc.returncode == 0, proc.stderr[-3000:]
            made[f"{kind}-{precision}"] = out
            made[f"{kind}-{precision}-log"] = proc.stdout + proc.stderr
    return made


def test_emulated_target_has_each_profiles_cpu(emulated):
    assert "aarch64" in emulated and "cortex-a72" in emulated
    flags = emulated.split("ISA flags: ")[1].split(")")[0]
    assert "asimd" in flags and "asimddp" not in flags  # the Pi 4's core has no dot-product instructions
    proc = run_cli("devices", "emulate", "rpi5", env=ENV, timeout=600)  # the same cached root, another core
    assert proc.returncode == 0, proc.stderr
    assert "cortex-a76" in proc.stdout and "asimddp" in proc.stdout.split("ISA flags: ")[1].split(")")[0]


@pytest.mark.parametrize("kind", ["text", "vision"])
def test_arm64_export_parity_is_measured_on_the_emulated_cores(bundles, kind):
    manifest = json.loads((bundles[f"{kind}-int8"] / "manifest.json").read_text())
    parity = manifest["parity"]
    assert manifest["quantization"]["mode"] == ("dynamic" if kind == "text" else "static")
    assert manifest["quantization"]["reduce_range"] is False
    for device, cpu, dotprod in (("rpi4", "cortex-a72", False), ("rpi5", "cortex-a76", True)):
        where = parity[f"int8@{device}"]["measured_on"]
        assert where["emulated"] is True and where["machine"] == "aarch64" and where["qemu_cpu"] == cpu
        assert ("asimddp" in where["isa_flags"]) is dotprod  # what the target's kernel reported, not assumed
        assert where["onnxruntime"]
    gate = parity["int8"]
    assert gate["measured_on"]["emulated"] is True and gate["passed"]
    host = parity["int8@host"]["measured_on"]
    assert host["where"] == "host" and host["machine"] != "aarch64" and "not on the aarch64 target" in host["note"]
    assert "parity int8 (on rpi" in bundles[f"{kind}-int8-log"]
    # aarch64 and x86 kernels give nearly the same logits for one file, and the same labels almost always
    assert parity["int8@rpi4"]["label_agreement"] >= 0.9


def test_int4_runs_on_the_emulated_pi_and_its_budget_is_measured_there(bundles, tmp_path):
    """An arm64-int4 bundle (MatMulNBits, GatherBlockQuantized) runs on the target's aarch64 onnxruntime
    (a core install, no torch); with --max-drop the chosen graph's accuracy drop is measured there too."""
    out = tmp_path / "int4"
    stage = Path(bundles["data"]).parent / "bert"
    proc = run_cli(
        "export", stage, "--preset", "arm64-int4", "--max-drop", "100", "--device", "rpi4", "--out", out, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int4" and manifest["opset"] == 21
    where = manifest["parity"]["int4"]["measured_on"]
    assert where["emulated"] is True and where["machine"] == "aarch64" and where["qemu_cpu"] == "cortex-a72"
    (on_target,) = manifest["quantization"]["budget"]["on_targets"]
    assert on_target["measured_on"]["machine"] == "aarch64" and on_target["drop_points"] <= 100
    assert 0 <= on_target["accuracy"] <= 1
    assert "budget check on emulated rpi4" in proc.stderr


def test_an_encoder_decoder_budget_is_scored_by_bleu_of_tokens_generated_on_the_target(
    emulated, tmp_path, minilm_tokenizer_dir
):
    """A T5 bundle's --max-drop on a target: its greedy tokens are generated by the target's onnxruntime
    (edgekit validate-bundle --generate), scored by BLEU here."""
    from test_budget import t5_stage

    stage = t5_stage(tmp_path, minilm_tokenizer_dir, plant=False)
    out = tmp_path / "t5"
    proc = run_cli(
        "export", stage, "--preset", "arm64-int8", "--max-drop", "100", "--device", "rpi4", "--out", out, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    budget = json.loads((out / "manifest.json").read_text())["quantization"]["budget"]
    (on_target,) = budget["on_targets"]
    assert budget["metric"] == "bleu" and on_target["measured_on"]["machine"] == "aarch64"
    assert 0 <= on_target["bleu"] <= 1 and on_target["drop_points"] <= 100
    # the same file on aarch64 and x86 kernels: nearly the same tokens -- where x86's int8 kernels do
    # not saturate. An arm64 file has no reduce_range; AVX2 without VNNI overflows its u8s8 products
    # (measured on an AVX2 EPYC: host BLEU 0.14, the emulated Pi 0.98), which is why on-target scoring exists.
    from edgekit.export.presets import cpu_has_vnni

    if cpu_has_vnni():
        assert abs(on_target["bleu"] - budget["score"]) <= 0.2, (on_target, budget["score"])
    else:
        assert on_target["bleu"] >= budget["score"] - 0.2, (on_target, budget["score"])
    assert "budget check on emulated rpi4" in proc.stderr


# each kind on one core, each core with one kind: the cores differ in ISA flags, the kinds in kernels
@pytest.mark.parametrize("kind,device", [("text-int8", "rpi5"), ("vision-int8", "rpi4")])
def test_bench_on_the_emulated_device(bundles, tmp_path, device, kind):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", bundles[kind], "--device", device, "--emulate", "--runs", "3", "--json", out, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads(out.read_text())
    result = document["results"][0]
    assert document["emulated"] is True and result["emulated"] is True
    assert document["valid"] is False and result["valid"] is False
    assert any("emulated" in r and "not the" in r for r in result["invalid_reasons"])
    assert result["environment"]["machine"] == "aarch64"
    assert result["measured_on"]["qemu_cpu"] == {"rpi4": "cortex-a72", "rpi5": "cortex-a76"}[device]
    assert result["latency_ms"]["p50"] > 0 and result["size_mb"] > 0
    assert result["bundle"] == str(bundles[kind])
    warning = next(line for line in proc.stderr.splitlines() if line.startswith("warning: result not valid"))
    assert "emulated: cortex-a7" in warning


def _eval(bundle, data_args, *extra, tmp_path, name):
    out = tmp_path / f"{name}.json"
    proc = run_cli("eval", bundle, *data_args, "--json", out, *extra, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.parametrize("kind,device", [("text", "rpi4"), ("vision", "rpi5")])
def test_eval_on_the_emulated_device_matches_the_host_for_fp32(bundles, tmp_path, kind, device):
    data = ["--data", str(bundles["data" if kind == "text" else "images"])]
    host, _ = _eval(bundles[f"{kind}-fp32"], data, tmp_path=tmp_path, name="host")
    emulated, stdout = _eval(
        bundles[f"{kind}-fp32"], data, "--device", device, "--emulate", tmp_path=tmp_path, name="emu"
    )
    assert emulated["emulated"] is True and emulated["measured_on"]["machine"] == "aarch64"
    assert emulated["measured_on"]["qemu_cpu"] == {"rpi4": "cortex-a72", "rpi5": "cortex-a76"}[device]
    assert emulated["examples"] == host["examples"]
    assert emulated["accuracy"] == pytest.approx(host["accuracy"])  # fp32 labels are exact under emulation
    assert "emulated under QEMU" in stdout
    int8, _ = _eval(bundles[f"{kind}-int8"], data, "--device", device, "--emulate", tmp_path=tmp_path, name="int8")
    assert int8["examples"] == host["examples"] and int8["measured_on"]["machine"] == "aarch64"
    # the int8 file scores within a few points of fp32 on the device's own kernels
    assert abs(int8["accuracy"] - host["accuracy"]) <= 0.1


def test_eval_on_the_emulated_device_writes_a_stage(bundles, tmp_path):
    out = tmp_path / "eval-stage"
    proc = run_cli(
        "eval", bundles["text-int8"], "--data", bundles["data"], "--device", "rpi4", "--emulate", "--out", out, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["stage"] == "eval" and meta["metrics"]["measured_on"]["qemu_cpu"] == "cortex-a72"
    assert meta["config"]["emulated"] == "rpi4"


def _session(monkeypatch):
    from edgekit.emulate.target import target_for

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", USER_CACHE_DIR)
    return target_for("rpi4")


def test_the_target_is_a_core_install(emulated, monkeypatch):
    """What a Pi has: no torch; training commands say which extra to install, in one line."""
    target = _session(monkeypatch)
    with target.session() as session:
        proc = session.run(["python", "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"], 300)
        assert proc.stdout.strip() == "True", proc.stderr
        for command in (
            ["export", "/tmp/x", "--out", "/tmp/y"],
            ["finetune", "x", "--out", "/tmp/y"],
            ["distill", "--teacher", "x", "--out", "/tmp/y"],
            ["run"],
            ["prune", "x", "--out", "/tmp/y"],
        ):
            proc = session.run(["edgekit", *command], 300)
            assert_user_error(proc, f"edgekit {command[0]} needs the train extra", "pip install 'edgekit[train]'")


def test_bootstrap_script_runs_as_root_in_the_emulated_target(emulated, tmp_path, monkeypatch):
    from edgekit.emulate.rootfs import edgekit_wheel

    wheel, _ = edgekit_wheel(tmp_path)
    target = _session(monkeypatch)
    with target.session() as session:
        script = session.upload(REPO / "devices" / "rpi" / "bootstrap.sh", "bootstrap.sh")
        remote_wheel = session.upload(wheel, wheel.name)
        proc = session.run(["bash", script, remote_wheel], 1800)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        assert "edgekit is ready: /root/edgekit-venv/bin/edgekit" in proc.stdout
        assert "sudo" not in proc.stderr
        shown = session.run(["/root/edgekit-venv/bin/edgekit", "devices", "show", "rpi5"], 300)
        assert shown.returncode == 0 and "cortex-a76" in shown.stdout
    shutil.rmtree(target.root / "root" / "edgekit-venv", ignore_errors=True)


# Bad inputs: one clear line, a non-zero exit, nothing half-built.


def test_a_device_without_emulation_is_refused(bundles):
    proc = run_cli("bench", bundles["text-int8"], "--device", "t4", "--emulate", env=ENV)
    assert_user_error(proc, "t4 cannot be emulated", "rpi4")
    proc = run_cli("devices", "emulate", "nosuch", env=ENV)
    assert_user_error(proc, "unknown device 'nosuch'")
    never = Path(bundles["data"]).parent / "never"
    proc = run_cli("export", Path(bundles["data"]).parent / "bert", "--device", "cpu", "--out", never, env=ENV)
    assert_user_error(proc, "cpu cannot be emulated")
    assert not never.exists()


def test_a_provider_the_target_lacks_is_one_line(bundles, tmp_path):
    profile = tmp_path / "pi-gpu.yaml"
    profile.write_text("name: pi-gpu\nproviders: [CUDAExecutionProvider]\nemulate: {cpu: cortex-a72}\n")
    proc = run_cli("bench", bundles["text-int8"], "--device", profile, "--emulate", env=ENV)
    line = assert_user_error(proc, "CUDAExecutionProvider")
    assert "emulated pi-gpu" in line


def test_a_failed_build_leaves_no_cache(tmp_path):
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    cache = tmp_path / "cache"
    proc = run_cli(
        "devices",
        "emulate",
        "rpi4",
        env={"EDGEKIT_CACHE_DIR": str(cache), "EDGEKIT_DEBIAN_MIRROR": "http://127.0.0.1:9/debian"},
        timeout=600,
    )
    assert_user_error(proc, "debootstrap failed", "log")
    left = sorted(p.name for p in (cache / "emulate").iterdir())
    assert all(name.endswith(".log") or name.endswith(".lock") for name in left), left  # no root, no temp folder
    from edgekit.emulate.rootfs import is_built

    assert not any(is_built(p) for p in (cache / "emulate").iterdir() if p.is_dir())


def test_not_root_is_one_line(monkeypatch):
    from edgekit.emulate.rootfs import check_host
    from edgekit.errors import EdgekitError

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EdgekitError, match="needs root"):
        check_host()


def test_missing_binfmt_is_one_line(monkeypatch, tmp_path):
    from edgekit.emulate import rootfs
    from edgekit.errors import EdgekitError

    monkeypatch.setattr(rootfs, "BINFMT_DIR", tmp_path)  # a binfmt_misc with nothing registered
    monkeypatch.setattr(rootfs.shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool != "update-binfmts" else None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(EdgekitError, match="qemu-aarch64 is not registered with binfmt_misc"):
        rootfs.check_host()
