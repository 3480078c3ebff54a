"""Run a bundle on saved inputs in a child process, so a runtime crash becomes a message.

    python -m edgekit.runtime.validate BUNDLE_DIR INPUTS.npz OUTPUTS.npz [TIMED_RUNS [GENERATE]]

INPUTS.npz holds arrays named ``<batch>__<input name>``; OUTPUTS.npz gets ``<batch>`` logits, and
with TIMED_RUNS the median milliseconds of that many runs of the first batch (``p50_ms``). With
GENERATE (an encoder-decoder bundle), ``<batch>`` holds greedy token ids instead (the decoder start
token first, up to GENERATE new tokens): what a budget scores by BLEU on a target.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError


def _main(folder: str, inputs: str, outputs: str, timed_runs: str = "0", generate: str = "0") -> int:
    from edgekit.runtime.bundle import Bundle

    bundle = Bundle(Path(folder), verify=False)
    batches: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    with np.load(inputs) as data:
        for key in data.files:
            batch, name = key.split("__", 1)
            batches[batch][name] = data[key]
    if int(generate):
        if not bundle.encode.spec.generates:
            raise EdgekitError(f"{folder} is a classifier bundle; only encoder-decoders generate")
        results = {batch: bundle.greedy(feeds, int(generate)) for batch, feeds in batches.items()}
    else:
        results = {batch: bundle.run(feeds) for batch, feeds in batches.items()}
    if int(timed_runs):
        import time

        first = next(iter(batches.values()))
        for _ in range(3):
            bundle.run(first)
        times = []
        for _ in range(int(timed_runs)):
            start = time.perf_counter()
            bundle.run(first)
            times.append((time.perf_counter() - start) * 1e3)
        results["p50_ms"] = np.asarray(float(np.median(times)))
    np.savez(outputs, **results)
    return 0


def run_isolated(folder: Path, batches: list[dict[str, np.ndarray]], workdir: Path, time_runs: int = 0):
    """Logits of the bundle in ``folder`` for each batch, computed in a child process; with
    ``time_runs``, the pair (logits, median ms of that many runs of the first batch)."""
    inputs, outputs = Path(workdir) / "parity_inputs.npz", Path(workdir) / "parity_outputs.npz"
    np.savez(inputs, **{f"{i}__{name}": array for i, batch in enumerate(batches) for name, array in batch.items()})
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.runtime.validate", str(folder), str(inputs), str(outputs), str(time_runs)],
        capture_output=True,
        text=True,
    )
    try:
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise EdgekitError(
                f"the exported model failed to run in {Path(folder).name} (exit code {proc.returncode}): {tail[:300]}"
            )
        with np.load(outputs) as data:
            logits = [data[str(i)] for i in range(len(batches))]
            return (logits, float(data["p50_ms"])) if time_runs else logits
    finally:
        inputs.unlink(missing_ok=True)
        outputs.unlink(missing_ok=True)


if __name__ == "__main__":
    try:
        sys.exit(_main(*sys.argv[1:6]))
    except EdgekitError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
