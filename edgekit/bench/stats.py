"""Error bars, A/B verdicts and load scenarios for latencies (standard library + numpy: runs on the device).

- Percentiles get a distribution-free 95% interval from order statistics: for n independent runs, the
  number of runs below the true q-quantile is Binomial(n, q), so [x_(l), x_(u)] with l, u taken from that
  distribution covers it with at least the stated confidence, whatever the noise looks like. Runs on a
  busy machine drift, so runs are not quite independent: that is what ``--compare`` corrects.
- ``--compare`` times bundles in interleaved rounds in one process (A B, then B A, ...), takes each
  round's median per bundle and the ratio of the two; drift slower than a round cancels in the ratio.
  The estimate is the geometric mean of the per-round ratios, its interval a bootstrap over rounds.
- Load scenarios follow MLPerf LoadGen's: single-stream (one query after another, today's bench),
  offline (the highest throughput over batch sizes and threads) and server (Poisson arrivals at a rate;
  a query's latency runs from its arrival, so queueing counts).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# A percentile is only reported as valid when enough runs lie beyond it: p90 needs 10 runs,
# p99 needs 100 (one run above the 99th percentile on average).
MIN_RUNS = {"p50": 2, "p90": 10, "p99": 100}


def percentile(values: list[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default 'linear' method): rank = q/100 * (n - 1)."""
    data = sorted(float(v) for v in values)
    if not data:
        return math.nan
    rank = q / 100 * (len(data) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


CONFIDENCE = 0.95
RESAMPLES = 4000
# Below this relative difference a compare verdict says "no difference beyond noise" even when the
# interval excludes 1: a few percent is what two sessions of one model differ by on a shared machine.
MIN_EFFECT = 0.03
DEFAULT_ROUNDS = 20


def _binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(X <= k) for X ~ Binomial(n, q), k = 0..n (log space, so large n does not overflow)."""
    k = np.arange(n + 1)
    lgamma = np.vectorize(math.lgamma, otypes=[float])
    log_pmf = lgamma(n + 1.0) - lgamma(k + 1.0) - lgamma(n - k + 1.0) + k * math.log(q) + (n - k) * math.log1p(-q)
    pmf = np.exp(log_pmf - log_pmf.max())
    return np.cumsum(pmf) / pmf.sum()


def quantile_interval(
    values: Sequence[float] | np.ndarray, q: float, confidence: float = CONFIDENCE
) -> tuple[float, float] | None:
    """A distribution-free interval for the q-th percentile (0-100) of independent runs, or None when
    there are too few runs for one (a 95% interval of p99 needs 368 runs: the chance that all runs lie below it must be under 2.5%)."""
    data = np.sort(np.asarray(values, dtype=np.float64))
    n, p = len(data), q / 100
    if n < 2 or not 0 < p < 1:
        return None
    cdf = _binomial_cdf(n, p)
    alpha = (1 - confidence) / 2
    # the lower bound is order statistic l (1-based) with P(X <= l-1) <= alpha; the upper u with P(X <= u-1) >= 1-alpha
    # [x_(l), x_(u)] (1-based) covers the quantile when l <= X <= u - 1: l - 1 is the largest k with
    # P(X <= k) <= alpha, u - 1 the smallest k with P(X <= k) >= 1 - alpha
    lows = np.nonzero(cdf <= alpha)[0]
    if not len(lows):
        return None
    low, high = int(lows[-1]) + 1, int(np.nonzero(cdf >= 1 - alpha)[0][0]) + 1
    if high > n:
        return None
    return float(data[low - 1]), float(data[high - 1])


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Normal-approximation interval of the mean (30 runs or more)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 30:
        return None
    z = _normal_quantile(1 - (1 - confidence) / 2)
    half = z * data.std(ddof=1) / math.sqrt(len(data))
    return float(data.mean() - half), float(data.mean() + half)


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02)
    a += (-3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01)
    b += (-1.328068155288572e01,)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00)
    c += (4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if p < 0.02425 or p > 1 - 0.02425:
        t = math.sqrt(-2 * math.log(min(p, 1 - p)))
        x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / (
            (((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1
        )
        return x if p < 0.5 else -x
    r = (p - 0.5) ** 2
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * (p - 0.5)
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def intervals(latencies_ms: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """95% intervals of p50, p90, p99 and the mean (ms); None where there are too few runs, with the reason."""
    out: dict[str, Any] = {"confidence": confidence, "method": "order statistics (percentiles), normal (mean)"}
    reasons = []
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        out[name] = quantile_interval(latencies_ms, q, confidence)
        if out[name] is None:
            reasons.append(f"{name} has no interval with {len(latencies_ms)} runs")
    out["mean"] = mean_interval(latencies_ms, confidence)
    if out["mean"] is None:
        reasons.append(f"mean has no interval with {len(latencies_ms)} runs (needs 30)")
    out["missing"] = reasons
    return out


# --- A/B comparison in interleaved rounds -------------------------------------------------------------


def interleaved_rounds(
    runners: dict[str, Callable[[], Any]],
    *,
    rounds: int = DEFAULT_ROUNDS,
    per_round: int = 10,
    warmup: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[list[float]]]:
    """Latencies (ms) of each runner, round by round: every round runs each one ``per_round`` times,
    in an order that alternates (A B, B A, ...) so that neither always runs first."""
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    timings: dict[str, list[list[float]]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            fn, times = runners[name], []
            for _ in range(per_round):
                t0 = clock()
                fn()
                times.append((clock() - t0) * 1e3)
            timings[name].append(times)
    return timings


def ratio_verdict(
    baseline_rounds: Sequence[Sequence[float]],
    other_rounds: Sequence[Sequence[float]],
    *,
    baseline: str = "A",
    other: str = "B",
    confidence: float = CONFIDENCE,
    min_effect: float = MIN_EFFECT,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """How much faster ``other`` is than ``baseline`` (their per-round median latencies' ratio), with a
    bootstrap interval over rounds and a verdict in words."""
    a = np.array([np.median(r) for r in baseline_rounds], dtype=np.float64)
    b = np.array([np.median(r) for r in other_rounds], dtype=np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("a comparison needs at least 2 rounds of each bundle")
    log_ratio = np.log(a / b)  # > 0: the other bundle is faster
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(log_ratio), size=(resamples, len(log_ratio)))
    boot = log_ratio[picks].mean(axis=1)
    alpha = (1 - confidence) / 2
    speedup = float(math.exp(log_ratio.mean()))
    low, high = (float(math.exp(v)) for v in np.quantile(boot, [alpha, 1 - alpha]))
    if low <= 1 <= high:
        verdict = f"no difference beyond noise ({other} / {baseline} speed {speedup:.2f}x [{low:.2f}, {high:.2f}])"
        different = False
    elif abs(math.log(speedup)) < math.log1p(min_effect):
        verdict = (
            f"no difference beyond noise ({other} / {baseline} speed {speedup:.3f}x [{low:.3f}, {high:.3f}], "
            f"under the {min_effect:.0%} resolution)"
        )
        different = False
    elif low > 1:
        verdict = f"{other} is {speedup:.2f}x faster than {baseline} [{low:.2f}, {high:.2f}]"
        different = True
    else:
        verdict = f"{other} is {1 / speedup:.2f}x slower than {baseline} [{1 / high:.2f}, {1 / low:.2f}]"
        different = True
    return {
        "baseline": baseline,
        "other": other,
        "speedup": speedup,  # baseline latency / other latency: > 1 means other is faster
        "interval": [low, high],
        "confidence": confidence,
        "rounds": len(a),
        "different": different,
        "min_effect": min_effect,
        "verdict": verdict,
        "method": "geometric mean of per-round median ratios; percentile bootstrap over rounds",
    }


# --- load scenarios -----------------------------------------------------------------------------------


def poisson_arrivals(rate: float, duration: float, seed: int = 0, min_count: int = 0) -> np.ndarray:
    """Arrival times (s from the start) of a Poisson process at ``rate`` queries per second: those within
    ``duration``, or the first ``min_count`` when fewer fall within it (the run is then longer)."""
    rng = np.random.default_rng(seed)
    expected = int(rate * duration * 1.5 + 10 * math.sqrt(rate * duration) + 10) + min_count
    times = np.cumsum(rng.exponential(1 / rate, size=expected))
    while times[-1] < duration or len(times) < min_count:  # rare: draw more
        times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1 / rate, size=expected))])
    within = times[times < duration]
    return within if len(within) >= min_count else times[:min_count]


def server_run(
    fn: Callable[[], Any],
    rate: float,
    duration: float,
    *,
    p99_bound_ms: float | None = None,
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Issue queries at Poisson arrivals (``rate`` per second for ``duration`` s) to one server that
    answers them in order; a query's latency is from its arrival to its answer, queueing included.
    Like LoadGen's minimum query count, a run issues at least the queries a p99 needs (100), lasting
    longer than ``duration`` at low rates. With a p99 bound, the run stops as soon as more than 1% of its
    queries are late (it cannot hold any more)."""
    arrivals = poisson_arrivals(rate, duration, seed, min_count=MIN_RUNS["p99"])
    allowed_late = int(0.01 * len(arrivals))
    latencies: list[float] = []
    late = 0
    start = clock()
    for arrival in arrivals:
        wait = start + arrival - clock()
        if wait > 0:
            sleep(wait)
        fn()
        latencies.append((clock() - start - arrival) * 1e3)
        if p99_bound_ms is not None and latencies[-1] > p99_bound_ms:
            late += 1
            if late > allowed_late:
                break
    elapsed = clock() - start
    stopped_early = len(latencies) < len(arrivals)
    result: dict[str, Any] = {
        "scenario": "server",
        "target_rate_qps": rate,
        "duration_s": duration,
        "issued_over_s": float(arrivals[-1]),
        "queries": len(latencies),
        "planned_queries": int(len(arrivals)),
        "achieved_rate_qps": len(latencies) / elapsed if elapsed > 0 else None,
        "elapsed_s": elapsed,
        "latency_ms": {q: percentile(latencies, p) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
        "p99_bound_ms": p99_bound_ms,
        "stopped_early": stopped_early,
    }
    if p99_bound_ms is not None:
        result["holds"] = bool(not stopped_early and result["latency_ms"]["p99"] <= p99_bound_ms)
        if stopped_early:
            result["latency_ms"]["p99"] = None  # unknown: the run stopped once the bound could no longer hold
            result["early_stop"] = f"more than 1% of {len(arrivals)} queries were over {p99_bound_ms:g} ms"
    return result


def find_server_rate(
    fn: Callable[[], Any],
    p99_bound_ms: float,
    duration: float,
    *,
    service_ms: float,
    trials: int = 8,
    tolerance: float = 0.05,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The highest Poisson rate whose p99 latency holds ``p99_bound_ms``, by bisection between 0 and the
    single-stream capacity (1000 / ``service_ms`` queries per second); each trial is one server run."""
    capacity = 1e3 / service_ms
    low, high = 0.0, capacity
    runs: list[dict[str, Any]] = []
    best = None
    for trial in range(trials):
        rate = (low + high) / 2
        run = server_run(fn, rate, duration, p99_bound_ms=p99_bound_ms, seed=seed + trial)
        runs.append(run)
        if progress:
            progress(f"server: {rate:.1f} queries/s {'holds' if run['holds'] else 'misses'} p99 <= {p99_bound_ms:g} ms")
        if run["holds"]:  # a run always has the queries its p99 needs
            low, best = rate, run
        else:
            high = rate
        if high - low <= tolerance * high:
            break
    return {
        "scenario": "server",
        "p99_bound_ms": p99_bound_ms,
        "capacity_qps": capacity,
        "max_rate_qps": best["target_rate_qps"] if best else None,
        "best": best,
        "trials": [
            {
                "rate_qps": r["target_rate_qps"],
                "holds": r["holds"],
                "p99_ms": r["latency_ms"]["p99"],
                "queries": r["queries"],
            }
            for r in runs
        ],
        "holds": best is not None,
        "reason": None
        if best
        else f"no rate tried held p99 <= {p99_bound_ms:g} ms (lowest tried {runs[-1]['target_rate_qps']:.2f} queries/s)",
    }


def offline_threads(limit: int | None = None) -> list[int]:
    """Thread counts the offline scenario tries: 1, 2, 4, ... up to this machine's cores."""
    cores = limit or os.cpu_count() or 1
    counts = {cores}
    t = 1
    while t < cores:
        counts.add(t)
        t *= 2
    return sorted(counts)
