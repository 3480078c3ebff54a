"""The emulated device as a target: a profile's CPU model in the cached root (see :mod:`.chroot`),
with a work folder per session that bench, eval and parity checks upload bundles into."""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bench.profiles import Profile
from edgekit.emulate.chroot import CORES, _command, _cpuinfo_file, _kill_group, check_cpu, isa_flags
from edgekit.emulate.rootfs import check_host, install_edgekit, is_built, qemu_version, root_folder
from edgekit.errors import EdgekitError


def emulated_cpu(profile: Profile) -> str:
    """The QEMU CPU model a device profile is emulated with (its ``emulate: {cpu: ...}``)."""
    from edgekit.bench.profiles import list_profiles, load_profile

    spec = profile.emulate
    if not spec:
        emulable = [n for n in list_profiles() if load_profile(n).emulate]
        raise EdgekitError(
            f"device profile {profile.name} cannot be emulated (it has no 'emulate' section); "
            f"emulated targets: {', '.join(emulable)}"
        )
    cpu = spec.get("cpu") if isinstance(spec, dict) else None
    check_cpu(str(cpu), f"device profile {profile.name}")
    return str(cpu)


def target_for(device: str):
    """The ready emulated target of a device profile name or file (one clear error when it is not)."""
    from edgekit.bench.profiles import load_profile

    return EmulatedTarget(load_profile(device))


def not_valid_reason(target) -> str:
    return (
        f"emulated: {target.cpu} under QEMU on this {target.host['machine']} host; the latency is not "
        f"the {target.profile.name}'s (labels and accuracy are exact)"
    )


@dataclass
class EmulatedTarget:
    """A device profile's CPU, emulated: ``session()`` gives a work folder inside the root."""

    profile: Profile
    folder: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.cpu = emulated_cpu(self.profile)
        check_host()
        self.folder = self.folder or root_folder()
        if not is_built(self.folder):
            raise EdgekitError(
                f"the emulated {self.profile.name} target is not built yet; build it once with "
                f"'edgekit devices emulate {self.profile.name}' (about 10 minutes, needs root)"
            )
        install_edgekit(self.folder)
        self.root = self.folder / "root"
        self.host = {"machine": platform.machine(), "cpu_model": _host_cpu()}

    @property
    def name(self) -> str:
        return f"emulated {self.profile.name} ({self.cpu} under QEMU)"

    def describe(self) -> dict[str, Any]:
        return {
            "where": "emulated",
            "emulated": True,
            "device": self.profile.name,
            "machine": "aarch64",
            "cpu_model": CORES[self.cpu]["model"],
            "qemu_cpu": self.cpu,
            "isa_flags": isa_flags(self.cpu),
            "qemu": qemu_version(),
            "host_machine": self.host["machine"],
            "host_cpu": self.host["cpu_model"],
        }

    @contextlib.contextmanager
    def session(self) -> Iterator[EmulatedSession]:
        work = Path(tempfile.mkdtemp(prefix="edgekit-", dir=self.root / "tmp"))
        try:
            yield EmulatedSession(self, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _host_cpu() -> str:
    from edgekit.bench.env import cpu_model

    return cpu_model()


@dataclass
class EmulatedSession:
    target: EmulatedTarget
    work: Path

    @property
    def where(self) -> str:
        return self.target.name

    def upload(self, local: Path, name: str) -> str:
        destination = self.work / name
        if Path(local).is_dir():
            shutil.copytree(local, destination)
        else:
            shutil.copy(local, destination)
        return self.inside(name)

    def inside(self, name: str) -> str:
        return f"/tmp/{self.work.name}/{name}"

    def run(self, words: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
        with _cpuinfo_file(self.target.cpu) as cpuinfo:
            command, env = _command(self.target.root, self.target.cpu, cpuinfo, words)
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
            try:
                out, err = proc.communicate(timeout=timeout)
            except BaseException:
                _kill_group(proc)
                raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def read(self, name: str) -> bytes | None:
        path = self.work / name
        return path.read_bytes() if path.is_file() else None
