"""`edgekit bench --host` against a real OpenSSH server on 127.0.0.1, started by the test."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_bench_local import make_bundle

from conftest import assert_user_error, run_cli

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists() or not shutil.which("ssh"),
    reason="needs OpenSSH (Debian: apt-get install openssh-server); .ci/run installs it",
)
EDGEKIT = str(Path(sys.executable).parent / "edgekit")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "host_key")
    _keygen(root / "user_key")
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    port = _free_port()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root}/host_key
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {root}/sshd.pid
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.fail(f"sshd did not start: {server.stderr.read()}")
            time.sleep(0.1)
    host_key = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (root / "empty_known_hosts").write_text("")

    def config(known_hosts: str) -> Path:
        path = root / f"ssh_config_{known_hosts}"
        path.write_text(f"""Host edgekit-device
  HostName 127.0.0.1
  Port {port}
  User {getpass.getuser()}
  IdentityFile {root}/user_key
  IdentitiesOnly yes
  UserKnownHostsFile {root}/{known_hosts}
  GlobalKnownHostsFile /dev/null
""")
        return path

    yield {"server": server, "known": config("known_hosts"), "unknown": config("empty_known_hosts"), "port": port}
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture()
def odd_bundle(tmp_path):
    """A bundle whose local path has spaces and shell syntax, which must be taken literally."""
    folder = tmp_path / "my bundle $(touch pwned) `id`; rm -rf x"
    make_bundle(folder)
    return folder


def test_remote_bench_with_odd_path(sshd, odd_bundle, tmp_path):
    out = tmp_path / "remote.json"
    proc = run_cli(
        "bench",
        odd_bundle,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["known"],
        "--remote-edgekit",
        EDGEKIT,
        "--runs",
        "30",
        "--json",
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    assert document["valid"] is True and document["device"] == "cpu"
    assert document["remote"]["host"] == "edgekit-device" and document["remote"]["exit_code"] == 0
    assert document["latency_ms"]["p50"] > 0 and document["runs"] >= 30
    assert document["remote"]["local_bundles"] == [str(odd_bundle)]
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    # the remote work folder is removed afterwards
    assert (
        subprocess.run(
            ["ssh", "-F", str(sshd["known"]), "edgekit-device", "test", "-e", document["remote"]["workdir"]]
        ).returncode
        == 1
    )


def test_unknown_host_key_is_refused(sshd, odd_bundle, tmp_path):
    proc = run_cli(
        "bench",
        odd_bundle,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["unknown"],
        "--remote-edgekit",
        EDGEKIT,
        "--json",
        tmp_path / "r.json",
    )
    assert_user_error(proc, "host key is not known", "never skips host-key checks")
    assert proc.returncode == 255
    assert not (tmp_path / "r.json").exists()


def test_remote_exit_code_is_passed_through(sshd, odd_bundle):
    proc = run_cli(
        "bench",
        odd_bundle,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["known"],
        "--remote-edgekit",
        EDGEKIT,
        "--device",
        "no-such-device",
    )
    assert_user_error(proc, "exit code 2", "unknown device 'no-such-device'")
    assert proc.returncode == 2


def test_killed_connection_gives_an_incomplete_result(sshd, tmp_path):
    import psutil

    daemon = psutil.Process(sshd["server"].pid)
    # ~0.05 ms a run at batch 1 would hit the harness's 100,000-run cap in ~5 s on an idle machine, before
    # the connection is cut; at batch 64 (~3 ms a run) the 60 s profile really runs 60 s
    big = make_bundle(tmp_path / "big", hidden=4096)

    def worker_started(sessions: list) -> bool:
        for session in sessions:
            try:
                if any("edgekit.bench.worker" in " ".join(p.cmdline()) for p in session.children(recursive=True)):
                    return True
            except psutil.Error:  # a process of the session ended (or is a zombie) while being looked at
                continue
        return False

    def kill_sessions() -> None:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait for the remote benchmark process, then cut its connection
            sessions = daemon.children(recursive=False)
            if worker_started(sessions):
                time.sleep(1)
                for session in sessions:
                    try:
                        session.kill()
                    except psutil.NoSuchProcess:
                        pass
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_sessions)
    killer.start()
    out = tmp_path / "r.json"
    slow = tmp_path / "slow.yaml"  # a profile whose run lasts 60 s, copied to the host with the bundle
    slow.write_text("name: slow\nwarmup: 1\nruns: 10\nmin_seconds: 60\nmax_seconds: 120\n")
    proc = run_cli(
        "bench",
        big,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["known"],
        "--remote-edgekit",
        EDGEKIT,
        "--device",
        slow,
        "--batch-size",
        "64",
        "--json",
        out,
        timeout=300,
    )
    killer.join()
    for orphan in psutil.process_iter(["cmdline"]):  # the remote side of a cut connection runs on; stop it
        if any("/tmp/edgekit-bench." in part for part in orphan.info["cmdline"] or []):
            try:
                orphan.kill()
            except psutil.NoSuchProcess:
                pass
    assert_user_error(proc, "incomplete result", "connection to edgekit-device lost")
    document = json.loads(out.read_text())
    assert document["valid"] is False and document["incomplete"] is True
    assert all(r["valid"] is False for r in document["results"])


def test_missing_identity_file(odd_bundle, tmp_path):
    proc = run_cli("bench", odd_bundle, "--host", "somewhere", "--identity", tmp_path / "nokey")
    assert_user_error(proc, "--identity", "does not exist")


def _image_folder(root: Path, per_class: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def test_remote_eval_scores_the_bundle_on_the_device(sshd, odd_bundle, tmp_path):
    data = _image_folder(tmp_path / "images; $(touch pwned)")
    local, remote = tmp_path / "local.json", tmp_path / "remote.json"
    assert run_cli("eval", odd_bundle, "--data", data, "--json", local).returncode == 0
    proc = run_cli(
        "eval",
        odd_bundle,
        "--data",
        data,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["known"],
        "--remote-edgekit",
        EDGEKIT,
        "--json",
        remote,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    here, there = json.loads(local.read_text()), json.loads(remote.read_text())
    assert there["examples"] == here["examples"] == 12 and there["accuracy"] == here["accuracy"]
    assert there["confusion_matrix"] == here["confusion_matrix"]
    where = there["measured_on"]
    assert where["where"] == "device" and where["emulated"] is False and where["host"] == "edgekit-device"
    assert where["machine"] and where["onnxruntime"]
    assert not (tmp_path / "pwned").exists()


def test_remote_eval_with_an_unknown_host_key_is_refused(sshd, odd_bundle, tmp_path):
    data = _image_folder(tmp_path / "images")
    proc = run_cli(
        "eval",
        odd_bundle,
        "--data",
        data,
        "--host",
        "edgekit-device",
        "--ssh-config",
        sshd["unknown"],
        "--remote-edgekit",
        EDGEKIT,
    )
    assert_user_error(proc, "host key")


def test_export_parity_over_ssh_is_measured_on_the_device(sshd, tmp_path, tiny_bert):
    import torch

    from conftest import write_questions, write_stage
    from edgekit.models import load_model

    write_questions(tmp_path / "train.tsv", 120, 1)
    # the classification head is drawn when the model loads: seeded, so the untrained model's near-tied
    # logits are the same whatever ran before in this process (a CI run drew a head whose int8 labels
    # agreed on 27.8% at SNR 36.6 dB)
    torch.manual_seed(0)
    bert = load_model(str(tiny_bert), task="text-classification", label_names=["HUM", "LOC", "NUM"])
    stage = write_stage(
        tmp_path / "stage",
        bert,
        f"task: text-classification\ndata: {{train: {tmp_path}/train.tsv}}\n"
        "teacher: {model: x}\nstudent: {model: x}\n",
    )
    out = tmp_path / "bundle"
    proc = run_cli(
        "export",
        stage,
        "--int8",
        "--host",
        "edgekit-device",
        "--device",
        "rpi4",
        "--ssh-config",
        sshd["known"],
        "--remote-edgekit",
        EDGEKIT,
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parity = json.loads((out / "manifest.json").read_text())["parity"]
    where = parity["int8"]["measured_on"]
    assert where["where"] == "device" and where["host"] == "edgekit-device" and where["device"] == "rpi4"
    assert parity["int8@host"]["measured_on"]["where"] == "host"
    assert "parity int8 (on rpi4" in proc.stdout
