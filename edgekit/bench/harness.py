"""The timing loop and its statistics (standard library + numpy).

A benchmark is a short, honest loop: warm-up runs that are reported but not mixed into the
steady state, then timed runs until both a run count and a minimum duration are reached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.bench.stats import MIN_RUNS, intervals, percentile

__all__ = ["MIN_RUNS", "percentile", "summarize"]

# A result is flagged unstable when the robust spread (1.4826 x median absolute deviation, the
# standard deviation of a normal sample) exceeds 10% of the median. Unlike std/mean it is not
# set off by a few scheduler outliers in thousands of runs.
UNSTABLE_SPREAD = 0.10


def summarize(latencies_ms: list[float]) -> dict[str, Any]:
    """mean, std, min, max, p50, p90, p99 (ms) and the validity of each percentile."""
    n = len(latencies_ms)
    array = np.asarray(latencies_ms, dtype=np.float64)
    stats: dict[str, Any] = {
        "runs": n,
        "mean": float(array.mean()) if n else math.nan,
        "std": float(array.std(ddof=1)) if n > 1 else 0.0,
        "min": float(array.min()) if n else math.nan,
        "max": float(array.max()) if n else math.nan,
    }
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        stats[name] = percentile(latencies_ms, q)
    invalid = [f"{name} needs at least {need} runs, got {n}" for name, need in MIN_RUNS.items() if n < need]
    stats["invalid_reasons"] = invalid
    stats["cv"] = stats["std"] / stats["mean"] if n > 1 and stats["mean"] > 0 else 0.0
    median = stats["p50"]
    mad = float(np.median(np.abs(array - median))) if n else math.nan
    stats["robust_spread"] = 1.4826 * mad / median if n > 1 and median > 0 else 0.0
    stats["unstable"] = bool(stats["robust_spread"] > UNSTABLE_SPREAD)

    stats["intervals"] = intervals(latencies_ms)
    return stats


def time_loop(
    fn: Callable[[], Any],
    *,
    warmup: int = 10,
    runs: int = 100,
    min_seconds: float = 1.0,
    max_seconds: float = 120.0,
    max_runs: int = 100_000,
) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times, then time it at least ``runs`` times and ``min_seconds`` long
    (stopping at ``max_seconds``). Latencies in milliseconds."""
    start = time.perf_counter()
    first = time.perf_counter()
    fn()
    first_ms = (time.perf_counter() - first) * 1e3
    warm = []
    for _ in range(max(warmup - 1, 0)):
        t0 = time.perf_counter()
        fn()
        warm.append((time.perf_counter() - t0) * 1e3)
    latencies: list[float] = []
    timed_start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        latencies.append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - timed_start
        if (len(latencies) >= runs and elapsed >= min_seconds) or elapsed >= max_seconds or len(latencies) >= max_runs:
            break
    stats = summarize(latencies)
    stats.update(
        first_inference_ms=first_ms,
        warmup_runs=warmup,
        warmup_mean_ms=float(np.mean(warm)) if warm else first_ms,
        timed_seconds=time.perf_counter() - timed_start,
        total_seconds=time.perf_counter() - start,
        stopped_by_time_limit=bool(len(latencies) < runs and len(latencies) < max_runs),
        stopped_by_max_runs=bool(len(latencies) < runs and len(latencies) >= max_runs),
    )
    return stats
