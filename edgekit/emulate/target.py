"""Run edgekit inside the emulated aarch64 root, with the CPU model of a device profile.

Each command runs in a private mount namespace (``unshare --mount``): /proc is mounted in the root
and an ARM /proc/cpuinfo matching the profile's core is bound over it (onnxruntime's CPU detection
parses that file, and under qemu-user it would otherwise read the x86 host's and crash).
``QEMU_CPU`` selects the emulated core, so onnxruntime picks the kernels that core has: Cortex-A72
(Raspberry Pi 4) lacks the dot-product instructions, Cortex-A76 (Pi 5) has them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgekit.errors import EdgekitError

# The ARM cores a profile's ``emulate: {cpu: ...}`` may name: what /proc/cpuinfo says on them.
CORES: dict[str, dict[str, str]] = {
    "cortex-a72": {"part": "0xd08", "variant": "0x0", "revision": "3",
                   "features": "fp asimd evtstrm crc32 cpuid", "model": "Cortex-A72 (Raspberry Pi 4 class)"},
    "cortex-a76": {"part": "0xd0b", "variant": "0x4", "revision": "1",
                   "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp", "model": "Cortex-A76 (Raspberry Pi 5 class)"},
}
ENV = {"PATH": "/opt/edgekit/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
       "PYTHONUNBUFFERED": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def cpuinfo_text(cpu: str, cores: int | None = None) -> str:
    spec = CORES[cpu]
    block = ("processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")
    count = cores or os.cpu_count() or 1  # as many as the host's /sys says exist
    return "".join(block.format(n=n, **spec) for n in range(count))


def isa_flags(cpu: str) -> list[str]:
    return CORES[cpu]["features"].split()


def check_cpu(cpu: str, where: str) -> None:
    if cpu not in CORES:
        raise EdgekitError(f"{where}: emulated CPU {cpu!r} is not one of {', '.join(CORES)}")


def _script(root: Path, cpu: str, cpuinfo: Path, words: Sequence[str]) -> str:
    r = shlex.quote(str(root))
    # QEMU_CPU must survive env -i: every program exec'd in the root starts its own qemu, which reads it
    from edgekit.emulate.rootfs import ROOT_CA

    extra = {"PIP_CERT": ROOT_CA} if (root / ROOT_CA.lstrip("/")).is_file() else {}  # pip trusts what the host trusts
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**ENV, **extra, "QEMU_CPU": cpu}.items())
    return (f"mount -t proc proc {r}/proc && mount --bind {shlex.quote(str(cpuinfo))} {r}/proc/cpuinfo && "
            f"mount --bind /sys {r}/sys && mount -o remount,bind,ro {r}/sys && "
            f"exec chroot {r} /usr/bin/env -i {env} " + " ".join(shlex.quote(str(w)) for w in words))


@contextlib.contextmanager
def _cpuinfo_file(cpu: str) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix=f"edgekit-cpuinfo-{cpu}-", suffix=".txt")
    with os.fdopen(fd, "w") as handle:
        handle.write(cpuinfo_text(cpu))
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _command(root: Path, cpu: str, cpuinfo: Path, words: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    check_cpu(cpu, "emulated target")
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "QEMU_CPU": cpu}
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _script(root, cpu, cpuinfo, words)], env


def run_in_root(root: Path, cpu: str, words: Sequence[str], log_path: Path, what: str) -> None:
    """A build step inside the root (output to the build log, progress on stderr)."""
    from edgekit.emulate.rootfs import _stream

    with _cpuinfo_file(cpu) as cpuinfo:
        command, env = _command(root, cpu, cpuinfo, words)
        _stream(command, log_path, what, env=env)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class EmulatedTarget:
    """A device profile's CPU, emulated: ``session()`` gives a work folder inside the root."""

    profile: dict[str, Any]
    folder: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        from edgekit.emulate import emulated_cpu
        from edgekit.emulate.rootfs import check_host, install_edgekit, is_built, root_folder

        self.cpu = emulated_cpu(self.profile)
        check_host()
        self.folder = self.folder or root_folder()
        if not is_built(self.folder):
            raise EdgekitError(f"the emulated {self.profile['name']} target is not built yet; build it once with "
                               f"'edgekit devices emulate {self.profile['name']}' (about 10 minutes, needs root)")
        install_edgekit(self.folder)
        self.root = self.folder / "root"
        self.host = {"machine": platform.machine(), "cpu_model": _host_cpu()}

    @property
    def name(self) -> str:
        return f"emulated {self.profile['name']} ({self.cpu} under QEMU)"

    def describe(self) -> dict[str, Any]:
        from edgekit.emulate.rootfs import qemu_version

        return {"where": "emulated", "emulated": True, "device": self.profile["name"], "machine": "aarch64",
                "cpu_model": CORES[self.cpu]["model"], "qemu_cpu": self.cpu, "isa_flags": isa_flags(self.cpu),
                "qemu": qemu_version(), "host_machine": self.host["machine"], "host_cpu": self.host["cpu_model"]}

    @contextlib.contextmanager
    def session(self) -> Iterator["EmulatedSession"]:
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
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    errors="replace", env=env, start_new_session=True, stdin=subprocess.DEVNULL)
            try:
                out, err = proc.communicate(timeout=timeout)
            except BaseException:
                _kill_group(proc)
                raise
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def read(self, name: str) -> bytes | None:
        path = self.work / name
        return path.read_bytes() if path.is_file() else None
