"""Bench on a remote device over OpenSSH: copy the bundles, run ``edgekit bench`` there, bring the JSON back.

Host keys are checked as the user's ssh configuration says: edgekit never turns checking off, and
runs ssh with ``BatchMode=yes`` so an unknown host fails instead of prompting. Every remote argument
is quoted with ``shlex.quote``; local paths never pass through a shell. A connection that drops, or a
run that exceeds its timeout, gives an incomplete result (``valid: false``), never a valid one.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

SSH_LOST = 255  # ssh's own exit code for connection errors


@dataclass
class SshTarget:
    host: str
    port: int | None = None
    identity: Path | None = None
    config: Path | None = None
    options: list[str] = field(default_factory=list)
    connect_timeout: int = 15
    remote_edgekit: str = "edgekit"

    def base(self, program: str) -> list[str]:
        args = [
            program,
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
        ]
        if self.config:
            args += ["-F", str(self.config)]
        if self.identity:
            args += ["-i", str(self.identity)]
        if self.port:
            args += ["-P" if program == "scp" else "-p", str(self.port)]
        for option in self.options:
            args += ["-o", option]
        return args


class RemoteError(EdgekitError):
    """The remote side failed; ``exit_code`` is the remote command's (or ssh's 255)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _ssh(target: SshTarget, command: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` (a list of words, each quoted) on the target."""
    remote = " ".join(shlex.quote(str(word)) for word in command)
    return subprocess.run(
        target.base("ssh") + ["--", target.host, remote],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _explain(proc: subprocess.CompletedProcess, what: str, host: str) -> RemoteError:
    stderr = proc.stderr.strip().splitlines()
    last = stderr[-1] if stderr else f"exit code {proc.returncode}"
    if proc.returncode == SSH_LOST:
        if any(
            "Host key verification failed" in line
            or "No ED25519 host key is known" in line
            or "REMOTE HOST IDENTIFICATION HAS CHANGED" in line
            for line in stderr
        ):
            return RemoteError(
                f"{host}'s host key is not known or does not match; check it and add it to known_hosts "
                f"(e.g. ssh {host} once), edgekit never skips host-key checks",
                SSH_LOST,
            )
        return RemoteError(f"ssh to {host} failed while {what}: {last}", SSH_LOST)
    return RemoteError(f"{what} on {host} failed (exit code {proc.returncode}): {last}", proc.returncode)


def bench_remote(
    bundles: list[Path], device: str, target: SshTarget, *, extra_args: Sequence[str] = (), run_timeout: float = 1800
) -> dict[str, Any]:
    """Copy ``bundles`` to ``target``, bench them there on ``device``, return the remote JSON document."""
    setup_timeout = target.connect_timeout + 60
    with ssh_session(target, prefix="edgekit-bench") as session:
        workdir = session.workdir
        remote_bundles = [session.upload(bundle, f"bundle{index}") for index, bundle in enumerate(bundles)]
        device_arg = device
        if Path(device).suffix in (".yaml", ".yml") and Path(device).is_file():
            device_arg = session.upload(Path(device), "profile.yaml")
        result_path = f"{workdir}/result.json"
        command = [
            target.remote_edgekit,
            "bench",
            *remote_bundles,
            "--device",
            device_arg,
            "--json",
            result_path,
            *extra_args,
        ]
        try:
            run = _ssh(target, command, run_timeout)
        except subprocess.TimeoutExpired:
            return incomplete(bundles, device, target.host, f"remote bench did not finish within {run_timeout:.0f} s")
        if run.returncode == SSH_LOST:
            return incomplete(
                bundles,
                device,
                target.host,
                f"connection to {target.host} lost during the run: "
                f"{(run.stderr.strip().splitlines() or ['no message'])[-1]}",
            )
        fetched = _ssh(target, ["cat", result_path], setup_timeout)
        if run.returncode != 0 and fetched.returncode != 0:
            raise _explain(run, "edgekit bench", target.host)
        if fetched.returncode != 0:
            return incomplete(bundles, device, target.host, "the remote run left no result file")
        try:
            document = json.loads(fetched.stdout)
        except json.JSONDecodeError:
            return incomplete(bundles, device, target.host, "the remote result file is not valid JSON")
        document["remote"] = {
            "host": target.host,
            "exit_code": run.returncode,
            "workdir": workdir,
            "local_bundles": [str(b) for b in bundles],
        }
        if run.returncode != 0:
            document["remote"]["error"] = (run.stderr.strip().splitlines() or [""])[-1]
        return document


def incomplete(bundles: list[Path], device: str, host: str, reason: str) -> dict[str, Any]:
    """The result of a run that did not finish: never valid."""
    from edgekit.bench.run import SCHEMA_VERSION

    return {
        "schema_version": SCHEMA_VERSION,
        "device": device,
        "valid": False,
        "incomplete": True,
        "error": reason,
        "remote": {"host": host},
        "results": [
            {
                "bundle": str(b),
                "name": Path(b).name,
                "device": device,
                "valid": False,
                "error": reason,
                "invalid_reasons": [reason],
            }
            for b in bundles
        ],
    }


class SshSession:
    """A work folder on an SSH host for :mod:`edgekit.targets` (made by :func:`ssh_session`)."""

    def __init__(self, target: SshTarget, workdir: str):
        self.target, self.workdir = target, workdir
        self.where = target.host

    def inside(self, name: str) -> str:
        return f"{self.workdir}/{name}"

    def upload(self, local: Path, name: str) -> str:
        destination = self.inside(name)
        copy = subprocess.run(
            self.target.base("scp") + ["-q", "-r", "--", str(local), f"{self.target.host}:{destination}"],
            capture_output=True,
            text=True,
            timeout=self.target.connect_timeout + 600,
            stdin=subprocess.DEVNULL,
        )
        if copy.returncode != 0:
            raise _explain(copy, f"copying {local}", self.target.host)
        return destination

    def run(self, words, timeout: float) -> subprocess.CompletedProcess:
        words = list(words)
        if words and words[0] == "edgekit":
            words[0] = self.target.remote_edgekit
        proc = _ssh(self.target, words, timeout)
        if proc.returncode == SSH_LOST:
            raise _explain(proc, f"running {words[1] if len(words) > 1 else words[0]}", self.target.host)
        return proc

    def read(self, name: str) -> bytes | None:
        remote = " ".join(shlex.quote(w) for w in ["cat", "--", self.inside(name)])
        proc = subprocess.run(
            self.target.base("ssh") + ["--", self.target.host, remote],
            capture_output=True,
            timeout=self.target.connect_timeout + 600,
            stdin=subprocess.DEVNULL,
        )
        return proc.stdout if proc.returncode == 0 else None


@contextmanager
def ssh_session(target: SshTarget, prefix: str = "edgekit-target"):
    """A temporary work folder on the host, removed afterwards whatever happens."""
    setup_timeout = target.connect_timeout + 60
    try:
        made = _ssh(target, ["mktemp", "-d", f"/tmp/{prefix}.XXXXXX"], setup_timeout)
    except subprocess.TimeoutExpired:
        raise RemoteError(f"ssh to {target.host} timed out after {setup_timeout} s", SSH_LOST) from None
    if made.returncode != 0:
        raise _explain(made, "creating a work folder", target.host)
    session = SshSession(target, made.stdout.strip().splitlines()[-1])
    try:
        yield session
    finally:
        try:
            _ssh(target, ["rm", "-rf", "--", session.workdir], setup_timeout)
        except (subprocess.TimeoutExpired, OSError):
            pass
