import json
import os
from pathlib import Path

import pytest

from edgekit.artifacts import check_output, fingerprint, sha256_file, stage_folder
from edgekit.errors import EdgekitError
from edgekit.records import read_meta, write_meta


def test_stage_folder_is_atomic_on_failure(tmp_path):
    out = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with stage_folder(out) as folder:
            (folder / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_stage_folder_replaces_only_with_force(tmp_path):
    out = tmp_path / "stage"
    with stage_folder(out) as folder:
        (folder / "a.txt").write_text("first")
    with pytest.raises(EdgekitError, match="already exists; pass --force"):
        with stage_folder(out):
            pass
    with stage_folder(out, force=True) as folder:
        (folder / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_meta_records_files_with_sha256(tmp_path):
    with stage_folder(tmp_path / "s") as folder:
        (folder / "model").mkdir()
        (folder / "model" / "w.bin").write_bytes(b"abc")
        write_meta(
            folder,
            stage="distill",
            config={"alpha": 0.3},
            metrics={"accuracy": 0.9},
            parameters=12,
            fingerprint_value=fingerprint("distill", {"alpha": 0.3}),
        )
    meta = read_meta(tmp_path / "s")  # the typed record; the file is checked as JSON below
    assert meta.stage == "distill" and meta.metrics["accuracy"] == 0.9 and meta.parameters == 12
    entry = meta.files["model/w.bin"]
    assert entry["bytes"] == 3
    assert entry["sha256"] == sha256_file(tmp_path / "s" / "model" / "w.bin")
    assert entry["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert meta.producer["tool"] == "edgekit"
    on_disk = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert on_disk["stage"] == "distill" and on_disk["metrics"]["accuracy"] == 0.9 and on_disk["parameters"] == 12
    assert on_disk["files"]["model/w.bin"] == entry and on_disk["schema_version"] == 1


def test_corrupt_meta_is_a_user_error(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(EdgekitError, match="corrupt"):
        read_meta(tmp_path)
    with pytest.raises(EdgekitError, match="not an edgekit stage folder"):
        read_meta(tmp_path / "missing")


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_check_output_rejects_a_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(EdgekitError):
        check_output(path, force=True)


def test_a_reused_stage_loses_the_leftovers_of_a_run_killed_while_replacing_it(tmp_path):
    from edgekit.stage_runner import Stage

    stage = Stage("prune", tmp_path / "pruned", {"amount": 0.4})
    with stage.folder() as folder:
        stage.finish(metrics={})
    # kill -9 after os.replace(tmp, out) and before the old copy was removed, or while writing it again
    (tmp_path / ".pruned.old-abc" / "pruned").mkdir(parents=True)
    (tmp_path / ".pruned.tmp-def").mkdir()
    (tmp_path / ".other.old-xyz").mkdir()  # another stage's: not this one's to remove
    assert Stage("prune", tmp_path / "pruned", {"amount": 0.4}).reused(True) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.old-xyz", "pruned"]
    assert folder != tmp_path / "pruned"


def test_a_command_keeps_its_temporary_files_in_one_folder_removed_at_exit(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from edgekit.artifacts import command_scratch

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"edgekit-cmd-{dead.stdout.strip()}-x").mkdir()  # left by a killed command
    (tmp_path / f"edgekit-export-{dead.stdout.strip()}-y").mkdir()
    alive = tmp_path / f"edgekit-cmd-{os.getppid()}-z"  # a command still running
    alive.mkdir()
    with command_scratch() as folder:
        assert tempfile.gettempdir() == str(folder) == os.environ["TMPDIR"] and folder.parent == tmp_path
        (Path(tempfile.mkdtemp(prefix="ort.quant.")) / "half-removed").write_text("x")
        child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                               capture_output=True, text=True)  # fmt: skip
        assert child.stdout.strip() == str(folder)  # child processes write there too
    assert tempfile.gettempdir() == str(tmp_path) == os.environ["TMPDIR"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name]
