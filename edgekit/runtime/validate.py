"""Run an ONNX model on saved inputs in a child process, so a runtime crash becomes a message.

    python -m edgekit.runtime.validate MODEL.onnx INPUTS.npz OUTPUTS.npz

INPUTS.npz holds arrays named ``<batch>__<input name>``; OUTPUTS.npz gets ``<batch>`` logits.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def _main(model: str, inputs: str, outputs: str) -> int:
    from edgekit.runtime.bundle import open_session

    session = open_session(Path(model))
    batches: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    with np.load(inputs) as data:
        for key in data.files:
            batch, name = key.split("__", 1)
            batches[batch][name] = data[key]
    results = {batch: session.run(["logits"], feeds)[0] for batch, feeds in batches.items()}
    np.savez(outputs, **results)
    return 0


def run_isolated(model: Path, batches: list[dict[str, np.ndarray]], workdir: Path) -> list[np.ndarray]:
    """Logits of ``model`` for each batch, computed by onnxruntime in a child process."""
    inputs, outputs = Path(workdir) / "parity_inputs.npz", Path(workdir) / "parity_outputs.npz"
    np.savez(inputs, **{f"{i}__{name}": array for i, batch in enumerate(batches) for name, array in batch.items()})
    proc = subprocess.run([sys.executable, "-m", "edgekit.runtime.validate", str(model), str(inputs), str(outputs)],
                          capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise EdgekitError(f"onnxruntime failed on {Path(model).name} (exit code {proc.returncode}): {tail[:300]}")
        with np.load(outputs) as data:
            return [data[str(i)] for i in range(len(batches))]
    finally:
        inputs.unlink(missing_ok=True)
        outputs.unlink(missing_ok=True)


if __name__ == "__main__":
    try:
        sys.exit(_main(*sys.argv[1:4]))
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
