"""Signals, two writers, a full disk and a poisoned cache: what outside users do to a long command.

Every interrupted command exits 130 (SIGINT) or 143 (SIGTERM) with one line and no output folder or
temp files; training writes its checkpoint first. A second writer of one --out gets 'busy'. A full
disk is a one-line error with nothing left on it. A garbage teacher-logit cache entry is recomputed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_user_error, at_a_terminal, write_stage

pytestmark = pytest.mark.slow
SIGNALS = [pytest.param(signal.SIGINT, 130, id="SIGINT"), pytest.param(signal.SIGTERM, 143, id="SIGTERM")]


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    from edgekit.models import load_model

    handle = load_model("resnet18", task="image-classification", label_names=[str(i) for i in range(10)], image_size=32)
    return write_stage(
        tmp_path_factory.mktemp("interrupt-stage") / "stage",
        handle,
        "task: image-classification\ndata: {dataset: digits, image_size: 32}\nteacher: {model: x}\n"
        "student: {model: x}\n",
    )


def _start(args, tmp_path: Path, env: dict | None = None) -> subprocess.Popen:
    private = tmp_path / "tmp"
    private.mkdir(exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(private), "EDGEKIT_CACHE_DIR": str(tmp_path / "cache"), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args)],
        cwd=tmp_path,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=at_a_terminal,
    )


def _signal_after(proc: subprocess.Popen, signum, marker: str | None, seconds: float) -> str:
    """Wait until stderr shows ``marker`` and ``seconds`` passed, send the signal, return all of stderr."""
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    start, deadline = time.time(), time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (marker is None or marker in "".join(lines)) and time.time() - start >= seconds:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"finished before the signal: {''.join(lines)[-2000:]}"
    proc.send_signal(signum)
    proc.wait(timeout=240)
    reader.join(timeout=30)
    return "".join(lines)


def _one_error(stderr: str, code: int, proc) -> str:
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _leftovers(folder: Path, out_name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{out_name}.tmp-") or p.name == out_name)


@pytest.mark.parametrize("signum, code", SIGNALS)
def test_a_signal_during_export(stage, tmp_path, signum, code):
    proc = _start(["export", stage, "--static", "--out", tmp_path / "bundle"], tmp_path)
    stderr = _signal_after(proc, signum, "export:", 4)
    line = _one_error(stderr, code, proc)
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in line
    assert _leftovers(tmp_path, "bundle") == []
    assert list((tmp_path / "tmp").glob("edgekit-*")) == []  # no /tmp/edgekit-export-* scratch left


@pytest.mark.parametrize("signum, code", SIGNALS)
def test_a_signal_during_training_writes_a_checkpoint_first(tmp_path, signum, code):
    args = [
        "finetune",
        "resnet18",
        "--dataset",
        "digits",
        "--image-size",
        "32",
        "--epochs",
        "30",
        "--batch-size",
        "16",
        "--set",
        "distill.checkpoint_every=5",
        "--out",
        tmp_path / "teacher",
    ]
    proc = _start(args, tmp_path)
    stderr = _signal_after(proc, signum, "epoch 1/30", 8)
    line = _one_error(stderr, code, proc)
    assert "checkpoint saved" in line and "--resume" in line
    assert (tmp_path / ".teacher.checkpoint" / "checkpoint.pt").is_file()
    assert not list((tmp_path / ".teacher.checkpoint").glob("*.tmp"))
    assert _leftovers(tmp_path, "teacher") == []


@pytest.mark.parametrize("signum, code", SIGNALS)
def test_a_signal_during_run(tmp_path, signum, code):
    proc = _start(["run", "--out", tmp_path / "run", "--set", "teacher.train.epochs=30"], tmp_path)
    stderr = _signal_after(proc, signum, "epoch", 6)
    _one_error(stderr, code, proc)
    run = tmp_path / "run"
    assert not [p.name for p in run.rglob(".*.tmp-*")]  # no half-written stage
    assert not (run / "report.md").exists()
    assert list((tmp_path / "tmp").glob("edgekit-*")) == []


def test_two_writers_on_one_folder(tmp_path):
    args = [
        "finetune",
        "resnet18",
        "--dataset",
        "digits",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--out",
        tmp_path / "t",
    ]
    first = _start(args, tmp_path)
    time.sleep(6)  # the first holds the lock by now (taken before any work)
    second = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", *map(str, args)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")},
    )
    line = assert_user_error(second, "busy:", "being written by pid")
    assert str(first.pid) in line
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["stage"] == "finetune" and meta["metrics"]["accuracy"] > 0
    assert not (tmp_path / ".t.lock").exists()  # released and removed at exit


def test_resume_never_replaces_a_folder_it_did_not_create(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("my results")
    (tmp_path / ".mine.checkpoint").mkdir()
    (tmp_path / ".mine.checkpoint" / "checkpoint.pt").write_bytes(b"x")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "finetune",
            "resnet18",
            "--dataset",
            "digits",
            "--resume",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_user_error(proc, "already exists", "--resume does not replace it")
    assert (out / "precious.txt").read_text() == "my results"


@pytest.fixture()
def small_disk(tmp_path):
    from conftest import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "small-disk", "size=3m", "the disk-full test (a 3 MB tmpfs)") as folder:
        yield folder


def test_a_full_disk_is_one_line_and_leaves_nothing(stage, small_disk, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli.main", "export", str(stage), "--fp32", "--out", str(small_disk / "bundle")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert_user_error(proc, "no space left")
    assert list(small_disk.iterdir()) == []  # ResNet-18 fp32 is 45 MB: nothing half-written stays on the 3 MB disk
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit.cli.main",
            "finetune",
            "resnet18",
            "--dataset",
            "digits",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--set",
            "distill.checkpoint_every=2",
            "--out",
            str(small_disk / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "EDGEKIT_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert_user_error(proc, "checkpoint")
    assert not list(small_disk.rglob("*.tmp")) and not (small_disk / "t").exists()


def test_a_poisoned_cache_entry_is_recomputed(tmp_path, monkeypatch, tiny_bert, capsys):
    """A garbage .npz of the right shape in the teacher-logit cache is never used."""
    import numpy as np

    from conftest import write_questions
    from edgekit.data.splits import Split
    from edgekit.data.tables import read_table
    from edgekit.models import load_model
    from edgekit.train.transfer import transfer_set

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    texts, names = read_table(write_questions(tmp_path / "q.tsv", 40, 3), "text", "label")
    labels = ["HUM", "LOC", "NUM"]
    split = Split("train", texts, np.asarray([labels.index(n) for n in names]))
    handle = load_model(str(tiny_bert), task="text-classification", label_names=labels)
    first = transfer_set(handle, split)
    assert not first.hit
    np.savez(first.path, logits=np.full_like(first.logits, 7.0))  # right shape, wrong content, no checksum
    capsys.readouterr()
    again = transfer_set(handle, split)
    assert not again.hit and "damaged or not edgekit's" in capsys.readouterr().err
    assert np.allclose(again.logits, first.logits)
    with np.load(first.path) as stored:  # the entry was replaced by a good one
        forged = dict(stored)
    forged["logits"] = forged["logits"] + 1  # content changed, checksum kept
    np.savez(first.path, **forged)
    assert not transfer_set(handle, split).hit
    assert transfer_set(handle, split).hit  # and a good entry is used
    assert REPO.exists()


@pytest.mark.parametrize("signum, code", SIGNALS)
def test_a_signal_during_distill_writes_a_checkpoint_first(tmp_path, signum, code):
    args = [
        "distill",
        "--teacher",
        "resnet18",
        "--student",
        "mobilenet_v2",
        "--dataset",
        "digits",
        "--image-size",
        "32",
        "--epochs",
        "30",
        "--batch-size",
        "16",
        "--set",
        "distill.checkpoint_every=5",
        "--out",
        tmp_path / "s",
    ]
    proc = _start(args, tmp_path)
    stderr = _signal_after(proc, signum, "epoch 1/30", 2)
    line = _one_error(stderr, code, proc)
    assert "checkpoint saved" in line
    assert list((tmp_path / ".s.checkpoint").rglob("checkpoint.pt"))
    assert _leftovers(tmp_path, "s") == []


def test_leftovers_of_a_killed_export_are_removed_by_the_next(stage, tmp_path):
    proc = _start(["export", stage, "--static", "--out", tmp_path / "bundle"], tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list((tmp_path / "tmp").rglob("edgekit-export-*")):
        time.sleep(0.1)
    time.sleep(1)
    proc.kill()
    proc.communicate(timeout=60)
    left = list((tmp_path / "tmp").glob("edgekit-*"))  # the command's scratch folder, the export's inside it
    assert left and list((tmp_path / "tmp").rglob("edgekit-export-*"))  # kill -9 skips every clean-up
    again = _start(["export", stage, "--fp32", "--out", tmp_path / "bundle"], tmp_path)
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-2000:]
    assert not any(p.exists() for p in left) and not list(tmp_path.glob(".bundle.tmp-*"))
    assert list((tmp_path / "tmp").glob("edgekit-*")) == []  # and the second command's own is gone too
    assert (tmp_path / "bundle" / "manifest.json").is_file()
