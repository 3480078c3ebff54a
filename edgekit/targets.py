"""Run edgekit's device-side commands on a target: a real device over SSH, or the emulated one.

A target gives a session with a work folder there: ``upload(local, name)`` copies a file or folder
in and returns its path on the target, ``run(words, timeout)`` runs a command (every word quoted),
``read(name)`` brings a file back. Only edgekit's core install is needed on the target.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit import registry
from edgekit.errors import EdgekitError


class Session(Protocol):
    where: str

    def upload(self, local: Path, name: str) -> str: ...

    def inside(self, name: str) -> str: ...

    def run(self, words: Sequence[str], timeout: float) -> subprocess.CompletedProcess: ...

    def read(self, name: str) -> bytes | None: ...


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no message"])[-1]


def _run_checked(session: Session, words: Sequence[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        proc = session.run(words, timeout)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"{what} on {session.where} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        message = _last_line(proc.stderr).removeprefix("error: ")
        raise EdgekitError(f"{what} on {session.where} failed (exit code {proc.returncode}): {message[:300]}")
    return proc


def _profile_file(profile, folder: Path, emulated: bool) -> Path:
    """``profile`` (a :class:`edgekit.bench.profiles.Profile`) as a file to send to the device."""
    import yaml

    settings = profile.to_json()
    if emulated:
        settings["cooldown_seconds"] = 0  # nothing heats up under emulation
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def bench_on(
    session: Session,
    bundles: Sequence[Path],
    profile,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = 1800,
    emulated: bool = False,
) -> dict[str, Any]:
    """``edgekit bench`` of ``bundles`` on the target, its JSON document back."""
    with tempfile.TemporaryDirectory(prefix="edgekit-target-") as scratch:
        remote = [session.upload(Path(b), f"bundle{i}") for i, b in enumerate(bundles)]
        profile_arg = session.upload(_profile_file(profile, Path(scratch), emulated), "profile.yaml")
    words = ["edgekit", "bench", *remote, "--device", profile_arg, "--json", session.inside("result.json"), *extra_args]
    proc = _run_checked(session, words, timeout, "edgekit bench")
    document = _json(session, "result.json", "edgekit bench")
    for result, local in zip(document.get("results", []), bundles):
        result["bundle"], result["name"] = str(local), Path(local).name
    document["target_log"] = _last_line(proc.stderr)
    return document


def write_portable_split(split, task: str, label_names: list[str], folder: Path) -> Path:
    """The evaluation split as a file the target's core install reads: JSONL for text, an
    ImageFolder of lossless PNGs for images (digits arrays included, so the target needs no scikit-learn)."""
    from edgekit.tasks import task_spec

    spec = task_spec(task)
    generates = spec.generates
    if spec.modality == "image":
        from edgekit.data.images import to_pil

        root = folder / "images"
        for index, (item, label) in enumerate(zip(split.items, split.labels)):
            name = label_names[int(label)]
            (root / name).mkdir(parents=True, exist_ok=True)
            to_pil(item).save(root / name / f"{index:06d}.png")
        return root
    path = folder / "data.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for item, label in zip(split.items, split.labels):
            target = str(label) if generates else label_names[int(label)]
            handle.write(json.dumps({"text": str(item), "label": target}, ensure_ascii=False) + "\n")
    return path


def eval_on(
    session: Session, bundle: Path, split, task: str, label_names: list[str], *, timeout: float = 3600
) -> dict[str, Any]:
    """``edgekit eval`` of the bundle on the target, on exactly the examples of ``split``."""
    with tempfile.TemporaryDirectory(prefix="edgekit-target-") as scratch:
        data = write_portable_split(split, task, label_names, Path(scratch))
        remote_bundle = session.upload(Path(bundle), "bundle")
        remote_data = session.upload(data, data.name)
    words = ["edgekit", "eval", remote_bundle, "--data", remote_data, "--json", session.inside("metrics.json")]
    _run_checked(session, words, timeout, "edgekit eval")
    metrics = _json(session, "metrics.json", "edgekit eval")
    metrics["split"] = split.name
    return metrics


def validate_on(
    session: Session, folder: Path, batches: list[dict[str, np.ndarray]], *, timeout: float = 3600, generate: int = 0
) -> list[np.ndarray]:
    """Logits of the candidate bundle in ``folder`` for each batch, computed on the target; with
    ``generate`` (encoder-decoders) its greedy token ids of up to that many new tokens instead."""
    with tempfile.TemporaryDirectory(prefix="edgekit-target-") as scratch:
        inputs = Path(scratch) / "inputs.npz"
        np.savez(inputs, **{f"{i}__{name}": array for i, batch in enumerate(batches) for name, array in batch.items()})
        remote_bundle = session.upload(Path(folder), "candidate")
        remote_inputs = session.upload(inputs, "inputs.npz")
    _run_checked(
        session,
        ["edgekit", "validate-bundle", remote_bundle, remote_inputs, session.inside("outputs.npz")]
        + (["--generate", str(int(generate))] if generate else []),
        timeout,
        "running the exported model",
    )
    raw = session.read("outputs.npz")
    if raw is None:
        raise EdgekitError(f"the target {session.where} wrote no outputs; check its edgekit install")
    with np.load(io.BytesIO(raw)) as data:
        return [data[str(i)] for i in range(len(batches))]


def _json(session: Session, name: str, what: str) -> dict[str, Any]:
    raw = session.read(name)
    if raw is None:
        raise EdgekitError(f"{what} on {session.where} left no result file")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise EdgekitError(f"{what} on {session.where} wrote a result that is not valid JSON") from None


def target_environment(session: Session) -> dict[str, Any]:
    """Machine, CPU model, ISA flags and versions as the target itself reports them."""
    proc = _run_checked(session, ["edgekit", "devices", "here", "--json"], 120, "edgekit devices here")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise EdgekitError(f"edgekit devices here on {session.where} printed no JSON; update edgekit there") from None


class SshDevice:
    """A real device over SSH, as a parity target (``name``, ``session()``, ``describe()``)."""

    def __init__(self, ssh, device: str):
        self.ssh, self.device = ssh, device
        self.name = f"{ssh.host} ({device}, over SSH)"

    def session(self):
        from edgekit.bench.ssh import ssh_session

        return ssh_session(self.ssh)

    def describe(self) -> dict[str, Any]:
        return {"where": "device", "emulated": False, "device": self.device, "host": self.ssh.host}


def parity_targets(preset, devices: Sequence[str] = (), ssh=None) -> tuple[list[Any], str | None]:
    """Where a lossy export's parity is judged, and a warning when it can only be this host.

    ``ssh`` (with one ``devices`` entry or the preset's first) checks on the real device; explicit
    ``devices`` are emulated; otherwise a preset whose target is another machine type than this
    host's is checked on the emulated targets of its devices that are built."""
    import platform

    target = preset.target or {}  # preset: an edgekit.export.presets.Preset
    machine = target.get("machine")
    wanted = list(devices) or list(target.get("devices") or [])
    if ssh is not None:
        return [SshDevice(ssh, wanted[0] if wanted else "device")], None
    foreign = bool(machine) and machine != platform.machine()
    if not devices and not foreign:
        return [], None
    if not registry.get("format", preset.format).can("torch_free"):
        return [], (
            f"warning: parity of this {machine or 'target'} {preset.format} bundle is measured on this "
            f"{platform.machine()} host only: the emulated target has edgekit's core install (no torch)"
        )
    from edgekit.bench.profiles import load_profile
    from edgekit.emulate.rootfs import is_built
    from edgekit.emulate.target import emulated_cpu

    if not devices and not is_built():
        return [], (
            f"warning: parity of this {machine} bundle is measured on this {platform.machine()} host's kernels, "
            f"not the target's; build the emulated target once (edgekit devices emulate {wanted[0] if wanted else 'rpi4'}) "
            "or pass --host to check on the device"
        )
    from edgekit.emulate.target import EmulatedTarget

    for name in wanted:
        emulated_cpu(load_profile(name))  # an unknown or non-emulable device fails before exporting
    return [EmulatedTarget(load_profile(name)) for name in wanted], None
