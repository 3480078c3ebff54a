"""Stage folders: every stage writes one folder with a ``meta.json`` (its record: :mod:`edgekit.records`).

Writes are atomic: a stage is built in a hidden temporary folder beside its
destination and renamed into place only when complete, so a failure never leaves a
half-written folder. Standard library only: the device path uses this too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError

META_FILE = "meta.json"
RECIPE_FILE = "recipe.yaml"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (configs, parent fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder`` except meta.json itself."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == META_FILE:
            continue
        table[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_json(path: Path, fix: str) -> Any:
    """Read a JSON file edgekit wrote; corruption is a user error whose message ends with ``fix``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgekitError(f"{path} is corrupt ({exc.msg} at line {exc.lineno}); {fix}") from None
    except UnicodeDecodeError:
        raise EdgekitError(f"{path} is not UTF-8 JSON (corrupt or not edgekit's); {fix}") from None
    except IsADirectoryError:
        raise EdgekitError(f"{path} is a folder, not a JSON file; {fix}") from None
    except OSError as exc:
        raise EdgekitError(f"{path} cannot be read ({exc.strerror}); check its permissions") from None


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


_LOCKS: dict[str, tuple[int, Path]] = {}


def lock_output(out: Path) -> bool:
    """One writer per output folder: an advisory lock file beside it (``.NAME.lock``, holding the pid),
    held until this process ends (the kernel releases it even after kill -9). A second writer gets
    ``busy: OUT is being written by pid N``."""
    import fcntl

    from edgekit.processes import is_main

    out = Path(out).absolute()
    if str(out) in _LOCKS or not is_main():  # under accelerate launch the main process alone writes
        return False
    if not out.parent.is_dir():
        return False  # nothing can be writing there yet; the stage creates the parent and locks then
    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EdgekitError(f"cannot write in {out.parent} ({exc.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise EdgekitError(
                f"busy: {out} is being written by pid {owner}; wait for it to finish or choose another --out"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not a file its last owner just removed
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _LOCKS[str(out)] = (fd, path)
    return True


def release_lock(out: Path) -> None:
    entry = _LOCKS.pop(str(Path(out).absolute()), None)
    if entry is not None:
        with contextlib.suppress(OSError):
            entry[1].unlink()
        with contextlib.suppress(OSError):
            os.close(entry[0])


def release_locks() -> None:
    for out in list(_LOCKS):
        release_lock(Path(out))


COMMAND_SCRATCH = "edgekit-cmd-"


@contextlib.contextmanager
def command_scratch() -> Iterator[Path]:
    """One temporary folder for a whole command, that every temporary file of it goes under: edgekit's,
    onnxruntime's and child processes' (``tempfile.tempdir`` and ``TMPDIR`` point there while it runs).
    Removed when the command ends, however it ends, so a Ctrl-C that lands while a library is removing
    its own temporary folder leaves nothing behind. Named by pid: what a killed command (kill -9 skips
    every clean-up) left is removed by the next command once that process is gone."""
    base = Path(tempfile.gettempdir())
    remove_dead_scratch(base, (COMMAND_SCRATCH, "edgekit-export-"))
    folder = Path(tempfile.mkdtemp(prefix=f"{COMMAND_SCRATCH}{os.getpid()}-", dir=base))
    previous = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = previous[0]
        if previous[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous[1]
        shutil.rmtree(folder, ignore_errors=True)


def remove_dead_scratch(base: Path, prefixes: tuple[str, ...]) -> None:
    """Folders in ``base`` named ``<prefix><pid>-...`` whose process is gone (another user's are kept)."""
    for prefix in prefixes:
        for folder in base.glob(f"{prefix}*-*"):
            pid = folder.name[len(prefix) :].split("-")[0]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except PermissionError:
                pass  # another user's live process


def check_output(out: Path, force: bool) -> None:
    """Fail early, before any work, when ``out`` exists and ``force`` is off."""
    out = Path(out)
    if out.exists() and not force:
        raise EdgekitError(f"output folder {out} already exists; pass --force to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise EdgekitError(f"output path {out} exists and is not a folder; choose another --out")


@contextlib.contextmanager
def stage_folder(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``out`` atomically. In a process other than the
    main one of a multi-process run, a scratch folder that is removed afterwards: ``out`` is the main
    process's to write."""
    from edgekit.processes import is_main

    out = Path(out)
    check_output(out, force)
    if not is_main():
        scratch = Path(tempfile.mkdtemp(prefix=f"edgekit-{out.name}-rank-"))
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    locked_here = lock_output(out)
    _remove_leftovers(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except BaseException:
        if locked_here:
            release_lock(out)
        raise
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if locked_here:  # a lock the command took up front stays until the command ends
            release_lock(out)


def _remove_leftovers(out: Path) -> None:
    for stale in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that was killed while writing this stage


def tidy_reused(out: Path) -> None:
    """A stage reused as it is may still have the leftovers of a run killed just after replacing it
    (``.NAME.old-*``) or while writing it again (``.NAME.tmp-*``): removed, unless another run holds
    the folder's lock now (its temporary folder is in use)."""
    from edgekit.processes import is_main

    out = Path(out)
    if not is_main() or not any(out.parent.glob(f".{out.name}.*-*")):
        return
    try:
        locked_here = lock_output(out)
    except EdgekitError:  # busy: another writer's folders
        return
    try:
        _remove_leftovers(out)
    finally:
        if locked_here:
            release_lock(out)


def check_fields(data: Any, wanted: dict[str, type], path: Path) -> None:
    """A JSON object edgekit wrote has these keys with these types, else one line naming the key."""
    if not isinstance(data, dict):
        raise EdgekitError(f"{path} is not a JSON object; re-run the stage that wrote it")
    for key, kind in wanted.items():
        if not isinstance(data.get(key), kind):
            raise EdgekitError(
                f"{path}: {key} is {'missing' if key not in data else type(data[key]).__name__}, "
                f"expected {kind.__name__}; re-run the stage that wrote it"
            )


def is_stage(folder: Path) -> bool:
    return (Path(folder) / META_FILE).is_file()
