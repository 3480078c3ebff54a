"""Build the emulated aarch64 target once: a Debian root filesystem with edgekit's core install.

The root is made by Debian's ``debootstrap`` for arm64 and runs under ``qemu-user-static`` through
binfmt_misc. A venv at ``/opt/edgekit`` holds edgekit's core dependencies (no torch), keyed by what
the root contains (suite, packages, core requirements); edgekit itself is installed from a wheel made
of this installation's files and re-installed whenever those files change. A build goes to a
temporary folder renamed into place only when it completed, so a build that failed midway is never
used; a later build removes what a killed one left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgekit import log
from edgekit.emulate.chroot import ROOT_CA, run_in_root, stream
from edgekit.errors import EdgekitError

SUITE = "bookworm"
DEB_ARCH = "arm64"
MACHINE = "aarch64"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
VENV = "/opt/edgekit"
WHEEL_STAMP = "edgekit-wheel.sha256"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
APT_HINT = "apt-get install qemu-user-static binfmt-support debootstrap"


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "edgekit") / "emulate"


def core_requirements() -> list[str]:
    """edgekit's own dependencies without extras: exactly what a Pi gets from ``pip install edgekit``."""
    from importlib import metadata

    try:
        requires = metadata.requires("edgekit") or []
    except metadata.PackageNotFoundError:
        raise EdgekitError("edgekit is not installed as a package here; install it (pip install -e .) first") from None
    return sorted(r for r in requires if "extra ==" not in r)


def root_key() -> str:
    parts = {"suite": SUITE, "arch": DEB_ARCH, "packages": PACKAGES, "venv": VENV, "requirements": core_requirements()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def root_folder() -> Path:
    return cache_dir() / f"debian-{SUITE}-{DEB_ARCH}-{root_key()}"


def is_built(folder: Path | None = None) -> bool:
    folder = folder or root_folder()
    return (folder / "build.json").is_file() and (folder / "root" / VENV.lstrip("/") / "bin" / "python").exists()


def check_host() -> None:
    """Root, the Debian tools, and aarch64 registered with binfmt_misc; one clear line otherwise."""
    if platform.system() != "Linux":
        raise EdgekitError(f"the emulated target needs Linux with qemu-user-static; this is {platform.system()}")
    if os.geteuid() != 0:
        raise EdgekitError(
            "building and running the emulated target needs root (debootstrap, chroot and mounts); "
            "run it as root, e.g. sudo edgekit devices emulate rpi4"
        )
    missing = [tool for tool in ("debootstrap", "qemu-aarch64-static", "unshare", "chroot") if not shutil.which(tool)]
    if missing:
        raise EdgekitError(f"the emulated target needs {', '.join(missing)}, which this machine lacks; {APT_HINT}")
    binfmt = BINFMT_DIR
    if not (binfmt / "status").exists() and binfmt == Path("/proc/sys/fs/binfmt_misc"):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)], capture_output=True)
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise EdgekitError(
            "aarch64 programs cannot run here: qemu-aarch64 is not registered with binfmt_misc "
            "(mount binfmt_misc on /proc/sys/fs/binfmt_misc and run update-binfmts --enable qemu-aarch64; "
            "in a container this needs a privileged one)"
        )


def debian_mirror() -> str:
    """EDGEKIT_DEBIAN_MIRROR, else the Debian mirror this machine's apt uses, else deb.debian.org."""
    if os.environ.get("EDGEKIT_DEBIAN_MIRROR"):
        return os.environ["EDGEKIT_DEBIAN_MIRROR"]
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            urls = [w for w in words if w.startswith(("http://", "https://"))]
            if urls and "security" not in urls[0] and (line.startswith(("deb ", "URIs:"))):
                return urls[0]
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One builder at a time per cache entry; a second waits (with a message) instead of colliding."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f".{name}.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"emulate: waiting for another edgekit building {name}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(rebuild: bool = False) -> Path:
    """The cached root folder, built now if missing (or ``rebuild``)."""

    check_host()
    final = root_folder()
    with locked(final.name):
        if is_built(final) and not rebuild:
            return final
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a build that was killed midway
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        log_path = final.parent / f"{final.name}.build.log"
        log_path.write_text("")
        started = time.time()
        try:
            root = tmp / "root"
            mirror = debian_mirror()
            log.info(
                f"emulate: building a Debian {SUITE} {DEB_ARCH} root in {final} from {mirror} "
                "(about 10 minutes on 2 cores; once)"
            )
            stream(
                [
                    "debootstrap",
                    f"--arch={DEB_ARCH}",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(root),
                    mirror,
                ],
                log_path,
                "debootstrap",
            )
            shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
            if Path(HOST_CA).is_file():
                shutil.copy(HOST_CA, root / ROOT_CA.lstrip("/"))
            run_in_root(root, "cortex-a72", ["python3", "-m", "venv", VENV], log_path, "venv")
            pip = [
                f"{VENV}/bin/pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
                *(["--cert", ROOT_CA] if Path(HOST_CA).is_file() else []),
            ]
            run_in_root(root, "cortex-a72", pip + core_requirements(), log_path, "core install (pip, emulated)")
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "root/.cache"):
                for item in (root / leftover).glob("*"):
                    shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
            (tmp / "build.json").write_text(
                json.dumps(
                    {
                        "suite": SUITE,
                        "arch": DEB_ARCH,
                        "packages": PACKAGES,
                        "requirements": core_requirements(),
                        "mirror": mirror,
                        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "seconds": round(time.time() - started),
                        "qemu": qemu_version(),
                    },
                    indent=2,
                )
            )
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.strip().splitlines() or ["unknown"])[0]


def edgekit_wheel(folder: Path) -> tuple[Path, str]:
    """A wheel of this installation's edgekit (package files and shipped YAML), and its content hash.

    Made from the installed files rather than by a build backend, so it works offline and from any
    install (editable checkout or wheel); the target's venv already has the dependencies."""
    import base64
    import zipfile

    from edgekit import __version__
    from edgekit.resources import data_dir

    package = Path(__file__).resolve().parent.parent
    files: list[tuple[str, Path]] = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc" and rel.parts[0] != "_data":
            files.append((f"edgekit/{rel.as_posix()}", path))
    for kind in ("devices", "export"):
        source = data_dir(kind)
        files += [
            (f"edgekit/_data/{kind}/{p.relative_to(source).as_posix()}", p)
            for p in sorted(source.rglob("*"))
            if p.is_file()
        ]
    content = hashlib.sha256()
    for name, path in files:
        content.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest = content.hexdigest()
    dist = f"edgekit-{__version__}.dist-info"
    meta = {
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: edgekit\nVersion: "
        + __version__
        + "\n"
        + "".join(f"Requires-Dist: {r}\n" for r in core_requirements()),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: edgekit\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nedgekit = edgekit.cli.main:main\n",
    }
    wheel = Path(folder) / f"edgekit-{__version__}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        entries = [(name, path.read_bytes()) for name, path in files] + [(n, t.encode()) for n, t in meta.items()]
        for name, data in entries:
            archive.writestr(name, data)
            hashed = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={hashed},{len(data)}")
        archive.writestr(f"{dist}/RECORD", "\n".join(record + [f"{dist}/RECORD,,"]) + "\n")
    return wheel, digest


def install_edgekit(folder: Path) -> str:
    """Install this edgekit into the target's venv unless the same files are there already."""

    root = folder / "root"
    stamp = root / VENV.lstrip("/") / WHEEL_STAMP
    with tempfile.TemporaryDirectory(prefix="edgekit-wheel-") as scratch:
        wheel, digest = edgekit_wheel(Path(scratch))
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return digest
        with locked(folder.name + "-wheel"):
            if stamp.is_file() and stamp.read_text().strip() == digest:
                return digest
            inbox = Path(tempfile.mkdtemp(prefix="edgekit-wheel-", dir=root / "tmp"))
            try:
                shutil.copy(wheel, inbox / wheel.name)
                inside = f"/tmp/{inbox.name}/{wheel.name}"
                log_path = folder.parent / f"{folder.name}.install.log"
                log_path.write_text("")
                run_in_root(
                    root,
                    "cortex-a72",
                    [
                        f"{VENV}/bin/pip",
                        "install",
                        "--no-deps",
                        "--force-reinstall",
                        "--no-cache-dir",
                        "--disable-pip-version-check",
                        inside,
                    ],
                    log_path,
                    "installing edgekit in the emulated target",
                )
            finally:
                shutil.rmtree(inbox, ignore_errors=True)
            stamp.write_text(digest + "\n")
    return digest
