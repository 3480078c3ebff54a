"""Is the harness honest? In one process and one run, time the same onnxruntime session with a bare
perf_counter loop and with edgekit's harness (interleaved rounds, so drift hits both), and compare the
peak RSS that `edgekit bench` reports for its worker process (read from /proc/self/status VmHWM inside
the worker) with the kernel's own account of that child, getrusage(RUSAGE_CHILDREN).ru_maxrss, read by
the parent after the worker exited.

    python benchmarks/harness_overhead.py BUNDLE [--rounds 5] [--runs 300] [--json out.json]

Target: harness p50 within 5% of the bare loop's p50.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from edgekit.bench.harness import time_loop
from edgekit.bench.worker import synthetic_inputs
from edgekit.runtime import Bundle


def bare_loop(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def worker_peak_rss(bundle: Path) -> tuple[float, float]:
    """(peak RSS reported by edgekit's worker, ru_maxrss of that child per the kernel), in MB."""
    import resource

    from edgekit.bench.run import bench_bundles

    document = bench_bundles([bundle], "cpu", runs=50)
    kernel = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return document["results"][0]["peak_rss_mb"], kernel / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reported_rss, kernel_rss = worker_peak_rss(args.bundle)  # first: no other child has run yet
    bundle = Bundle(args.bundle)
    feeds = synthetic_inputs(bundle, 1, 128)
    step = lambda: bundle.run(feeds)  # noqa: E731 - the same call for both loops
    for _ in range(20):
        step()
    bare, harness = [], []
    for _ in range(args.rounds):
        bare.append(bare_loop(step, args.runs))
        harness.append(time_loop(step, warmup=1, runs=args.runs, min_seconds=0)["p50"])
    ratios = [h / b for h, b in zip(harness, bare)]
    summary = {
        "bundle": str(args.bundle),
        "rounds": args.rounds,
        "runs_per_round": args.runs,
        "bare_p50_ms": statistics.median(bare),
        "harness_p50_ms": statistics.median(harness),
        "harness_over_bare_p50": statistics.median(ratios),
        "ratio_per_round": ratios,
        "worker_peak_rss_mb_reported": reported_rss,
        "worker_ru_maxrss_mb_kernel": kernel_rss,
    }
    summary["within_5_percent"] = abs(summary["harness_over_bare_p50"] - 1) <= 0.05
    print(
        f"p50 bare loop {summary['bare_p50_ms']:.4f} ms, harness {summary['harness_p50_ms']:.4f} ms: "
        f"ratio {summary['harness_over_bare_p50']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)}); "
        f"within 5%: {summary['within_5_percent']}"
    )
    print(
        f"worker peak RSS: edgekit reports {reported_rss:.1f} MB (VmHWM), kernel ru_maxrss {kernel_rss:.1f} MB "
        f"(ratio {reported_rss / kernel_rss:.3f})"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
