"""Measure one bundle in a fresh process, so load time and peak memory belong to it alone.

python -m edgekit.bench.worker CONFIG.json      (prints one JSON object on stdout)
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_bytes() -> int:
    """VmHWM from /proc (Linux); ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024


def current_rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def synthetic_inputs(bundle, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if bundle.encode.spec.modality == "image":
        size = int(bundle.manifest.preprocessing["image_size"])
        return {"pixel_values": rng.standard_normal((batch, 3, size, size), dtype=np.float32)}
    vocab = bundle.encode.tokenizer.get_vocab_size()
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, size=(batch, seq_len), dtype=np.int64)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: arrays[name] for name in bundle.encode.input_names}


def real_inputs(bundle, items: list[Any], batch: int) -> list[dict[str, np.ndarray]]:
    return [bundle.encode(items[i : i + batch]) for i in range(0, len(items) - batch + 1, batch)] or [
        bundle.encode(items[:batch])
    ]


def measure(config: dict[str, Any]) -> dict[str, Any]:
    from edgekit.artifacts import sha256_file
    from edgekit.bench.harness import time_loop
    from edgekit.bench.profiles import Profile
    from edgekit.runtime import Bundle

    profile = Profile.from_json(config["profile"])
    folder = Path(config["bundle"])
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    bundle = Bundle(
        folder,
        providers=config["providers"],
        threads=profile.threads,
        graph_optimization=profile.graph_optimization,
    )
    load_ms = (time.perf_counter() - t0) * 1e3
    if bundle.encode.spec.generates:
        from edgekit.errors import EdgekitError

        raise EdgekitError(
            "bench measures classifiers; encoder-decoder (seq2seq) bundles are not benched yet, "
            "use 'edgekit eval' for their BLEU/ROUGE-L"
        )
    rss_loaded = current_rss_bytes()
    items = config.get("items")
    batch_sizes = config.get("batch_sizes") or profile.batch_sizes
    runs = config.get("runs") or profile.runs

    def feeds_for(batch: int) -> list[dict[str, np.ndarray]]:
        if items:
            return real_inputs(bundle, items, batch)
        return [synthetic_inputs(bundle, batch, profile.sequence_length)]

    throughput = {}
    latency = None
    for batch in batch_sizes:
        feeds = feeds_for(batch)
        state = {"i": 0}

        def step(feeds=feeds, state=state) -> None:  # this batch size's inputs, bound now
            bundle.run(feeds[state["i"] % len(feeds)])
            state["i"] += 1

        stats = time_loop(
            step,
            warmup=profile.warmup,
            runs=runs,
            min_seconds=profile.min_seconds,
            max_seconds=profile.max_seconds,
        )
        throughput[str(batch)] = {
            "items_per_second": batch * 1e3 / stats["mean"] if stats["mean"] else None,
            "p50_ms": stats["p50"],
            "runs": stats["runs"],
        }
        if latency is None:
            latency = {**stats, "batch_size": batch}
    files = [folder / g.file for g in bundle.manifest.graphs]
    return {
        "bundle": str(folder),
        "model_sha256": sha256_file(files[0]) if len(files) == 1 else {p.name: sha256_file(p) for p in files},
        "size_bytes": bundle.manifest.model_bytes(folder),
        "load_ms": load_ms,
        "first_inference_ms": latency["first_inference_ms"],
        "latency_ms": {k: latency[k] for k in ("p50", "p90", "p99", "mean", "std", "min", "max")},
        "runs": latency["runs"],
        "batch_size": latency["batch_size"],
        "warmup": {"runs": latency["warmup_runs"], "mean_ms": latency["warmup_mean_ms"]},
        "invalid_reasons": latency["invalid_reasons"]
        + (
            [f"stopped at max_seconds={profile.max_seconds} before {runs} runs"]
            if latency["stopped_by_time_limit"]
            else []
        )
        + (
            [f"stopped at the cap of {latency['runs']} runs before {runs} runs"]
            if latency["stopped_by_max_runs"]
            else []
        ),
        "unstable": latency["unstable"],
        "cv": latency["cv"],
        "robust_spread": latency["robust_spread"],
        "throughput": throughput,
        "inputs": "real" if items else "synthetic",
        "peak_rss_bytes": peak_rss_bytes(),
        "model_memory_bytes": rss_loaded - rss_before,
        "providers": bundle.session.get_providers(),
        "threads": profile.threads,
    }


def main(path: str) -> int:
    config = json.loads(Path(path).read_text())
    try:
        result = measure(config)
    except Exception as exc:  # reported to the parent as an incomplete result, never as a valid one
        from edgekit.errors import EdgekitError

        message = str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
        sys.stdout.write(json.dumps({"error": message}) + "\n")  # the parent reads one JSON line
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
