"""Run a command inside the emulated aarch64 root with the CPU model of a device profile.

Each command runs in a private mount namespace (``unshare --mount``): /proc is mounted in the root
and an ARM /proc/cpuinfo matching the profile's core is bound over it (onnxruntime's CPU detection
parses that file, and under qemu-user it would otherwise read the x86 host's and crash). /sys is
bound read-only. ``QEMU_CPU`` selects the emulated core, so onnxruntime picks the kernels that core
has: Cortex-A72 (Raspberry Pi 4) lacks the dot-product instructions, Cortex-A76 (Pi 5) has them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgekit.errors import EdgekitError

ROOT_CA = "/etc/edgekit-host-ca.crt"  # the host's CA bundle, so pip inside trusts what the host trusts

# The ARM cores a profile's ``emulate: {cpu: ...}`` may name: what /proc/cpuinfo says on them.
CORES: dict[str, dict[str, str]] = {
    "cortex-a72": {
        "part": "0xd08",
        "variant": "0x0",
        "revision": "3",
        "features": "fp asimd evtstrm crc32 cpuid",
        "model": "Cortex-A72 (Raspberry Pi 4 class)",
    },
    "cortex-a76": {
        "part": "0xd0b",
        "variant": "0x4",
        "revision": "1",
        "features": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
        "lrcpc dcpop asimddp",
        "model": "Cortex-A76 (Raspberry Pi 5 class)",
    },
}
ENV = {
    "PATH": "/opt/edgekit/bin:/usr/local/bin:/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def cpuinfo_text(cpu: str, cores: int | None = None) -> str:
    spec = CORES[cpu]
    block = (
        "processor\t: {n}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n"
    )
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
    extra = {"PIP_CERT": ROOT_CA} if (root / ROOT_CA.lstrip("/")).is_file() else {}  # pip trusts what the host trusts
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in {**ENV, **extra, "QEMU_CPU": cpu}.items())
    return (
        f"mount -t proc proc {r}/proc && mount --bind {shlex.quote(str(cpuinfo))} {r}/proc/cpuinfo && "
        f"mount --bind /sys {r}/sys && mount -o remount,bind,ro {r}/sys && "
        f"exec chroot {r} /usr/bin/env -i {env} " + " ".join(shlex.quote(str(w)) for w in words)
    )


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
    with _cpuinfo_file(cpu) as cpuinfo:
        command, env = _command(root, cpu, cpuinfo, words)
        stream(command, log_path, what, env=env)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stream(command: list[str], log_path: Path, what: str, env: dict | None = None) -> None:
    """Run a long step, its output to a log, a progress line on stderr; a clear error when it fails."""
    from tqdm.auto import tqdm

    with (
        open(log_path, "a") as log,
        tqdm(desc=what, bar_format="{desc} {elapsed}", file=sys.stderr, leave=False) as bar,
    ):
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )
        last = ""
        try:
            for line in proc.stdout:
                log.write(line)
                if line.strip():
                    last = line.strip()
                    bar.set_description_str(f"{what}: {last[:60]}")
            code = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
            raise
    if code != 0:
        raise EdgekitError(f"{what} failed (exit code {code}): {last[:200]}; full log: {log_path}")
