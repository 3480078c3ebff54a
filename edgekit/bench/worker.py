"""Measure one bundle in a fresh process, so load time and peak memory belong to it alone.

python -m edgekit.bench.worker CONFIG.json      (prints one JSON object on stdout)
"""

from __future__ import annotations

import json
import math
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


def synthetic_length(bundle, seq_len: int) -> int:
    """The synthetic sequence length for ``bundle``: the profile's, but never longer than the texts the
    bundle's tokenizer makes (its ``max_length``): longer inputs would time what the bundle never sees,
    and a program planned for its own max_length (ExecuTorch) cannot run them."""
    longest = bundle.manifest.preprocessing.get("max_length")
    return min(int(seq_len), int(longest)) if longest else int(seq_len)


def synthetic_inputs(bundle, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq_len = synthetic_length(bundle, seq_len)
    if bundle.encode.spec.modality == "image":
        size = int(bundle.manifest.preprocessing["image_size"])
        return {"pixel_values": rng.standard_normal((batch, 3, size, size), dtype=np.float32)}
    # the embedding's rows: a vocabulary-pruned tokenizer keeps every token string (pruned ones name [UNK])
    vocab = max(bundle.encode.tokenizer.get_vocab().values()) + 1
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, size=(batch, seq_len), dtype=np.int64)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: arrays[name] for name in bundle.encode.input_names}


def real_inputs(bundle, items: list[Any], batch: int) -> list[dict[str, np.ndarray]]:
    return [bundle.encode(items[i : i + batch]) for i in range(0, len(items) - batch + 1, batch)] or [
        bundle.encode(items[:batch])
    ]


def _open(folder: Path, config: dict[str, Any], profile, threads: int | None = None):
    from edgekit.runtime import Bundle

    bundle = Bundle(
        folder,
        providers=config["providers"],
        threads=profile.threads if threads is None else threads,
        graph_optimization=profile.graph_optimization,
    )
    return bundle


def _feeds(bundle, items, batch: int, profile) -> list[dict[str, np.ndarray]]:
    if items:
        return real_inputs(bundle, items, batch)
    return [synthetic_inputs(bundle, batch, profile.sequence_length)]


def _tokens(config: dict[str, Any], profile) -> int:
    """How many tokens a seq2seq bundle generates per run: --output-tokens, else the profile's."""
    return int(config.get("output_tokens") or profile.output_tokens)


def _stepper(bundle, feeds, tokens: int = 1, record: list | None = None):
    """One inference on these inputs, in turn: a classifier's forward pass, or (encoder-decoders) the
    greedy generation of exactly ``tokens`` tokens (EOS does not stop it, so every run does the same
    work), its time to first token and each later token's latency (ms) appended to ``record``."""
    state = {"i": 0}
    if not bundle.encode.spec.generates:

        def step() -> None:
            bundle.run(feeds[state["i"] % len(feeds)])
            state["i"] += 1

        return step
    start_id = int(bundle.manifest.preprocessing["decoder_start_id"])
    record = [] if record is None else record

    def generate() -> None:
        inputs = feeds[state["i"] % len(feeds)]
        state["i"] += 1
        t0 = time.perf_counter()
        decoding = bundle.begin(inputs)  # the encoder (and the cross-attention cache)
        ids = np.full((len(decoding["hidden"]), 1), start_id, dtype=np.int64)
        marks = [time.perf_counter()]
        for _ in range(tokens):
            ids = bundle.advance(decoding, ids).argmax(-1)[:, None]
            marks.append(time.perf_counter())
        record.append(((marks[1] - t0) * 1e3, np.diff(marks[1:]) * 1e3))

    return generate


def _generation(records: list, runs: int, tokens: int, batch: int, bundle, feeds) -> dict[str, Any]:
    """Time to first token, per-token decode latency and tokens/s of the last ``runs`` generations (the
    timed ones; the warm-up ran first), each with its 95% interval."""
    from edgekit.bench.harness import summarize

    timed = records[-runs:]
    first = summarize([r[0] for r in timed])
    later = np.concatenate([r[1] for r in timed]) if tokens > 1 else np.zeros(0)
    per_token = summarize(later.tolist()) if len(later) else None
    totals = [r[0] + float(np.sum(r[1])) for r in timed]
    out: dict[str, Any] = {
        "output_tokens": tokens,
        "stops_at_eos": False,
        "input_tokens": float(np.mean([f["attention_mask"].sum(1).mean() for f in feeds])),
        "batch_size": batch,
        "kv_cache": bundle.cached,
        "runs": len(timed),
        "time_to_first_token_ms": {k: first[k] for k in ("p50", "p90", "p99", "mean")},
        "time_to_first_token_ci95_ms": {k: first["intervals"][k] for k in ("p50", "p90", "p99", "mean")},
        "per_token_ms": None,
        "per_token_ci95_ms": None,
        "per_token_samples": len(later),
        "tokens_per_second": batch * tokens * 1e3 / float(np.mean(totals)),
        "invalid_reasons": [f"time to first token: {r}" for r in first["invalid_reasons"]],
    }
    if per_token is None:
        out["per_token_reason"] = "one output token: there is no later token to time (--output-tokens 2 or more)"
    else:
        out["per_token_ms"] = {k: per_token[k] for k in ("p50", "p90", "p99", "mean")}
        out["per_token_ci95_ms"] = {k: per_token["intervals"][k] for k in ("p50", "p90", "p99", "mean")}
        out["invalid_reasons"] += [f"per token: {r}" for r in per_token["invalid_reasons"]]
    return out


def _latency_fields(stats: dict[str, Any]) -> dict[str, Any]:
    """A result's latency figures (ms) and their 95% intervals, from the harness's statistics."""
    return {
        "latency_ms": {k: stats[k] for k in ("p50", "p90", "p99", "mean", "std", "min", "max")},
        "latency_ci95_ms": {k: stats["intervals"][k] for k in ("p50", "p90", "p99", "mean")},
        "latency_ci_missing": stats["intervals"]["missing"],
    }


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def measure(config: dict[str, Any]) -> dict[str, Any]:
    from edgekit.artifacts import sha256_file
    from edgekit.bench import energy
    from edgekit.bench.profiles import Profile

    profile = Profile.from_json(config["profile"])
    folder = Path(config["bundle"])
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()
    bundle = _open(folder, config, profile)
    load_ms = (time.perf_counter() - t0) * 1e3
    rss_loaded = current_rss_bytes()
    items = config.get("items")
    batch_sizes = config.get("batch_sizes") or profile.batch_sizes
    runs = config.get("runs") or profile.runs

    tokens = _tokens(config, profile)
    throughput, latency, first_step, generation = _time_batches(bundle, items, batch_sizes, runs, tokens, profile)
    scenario = config.get("scenario") or {"name": "single-stream"}
    extra: dict[str, Any] = {}
    if scenario["name"] == "server":
        extra["server"] = _server(scenario, _stepper(bundle, _feeds(bundle, items, 1, profile), tokens), latency)
    elif scenario["name"] == "offline":
        extra["offline"] = _offline(folder, config, profile, items, bundle)
    files = [folder / g.file for g in bundle.manifest.graphs]
    invalid = _invalid_reasons(latency, runs, profile)
    if generation is not None:
        extra["generation"] = generation
        invalid += generation["invalid_reasons"]
    measured_energy = energy.measure(first_step, profile.energy_meters, profile.energy_seconds)
    measured_energy["batch_size"] = latency["batch_size"]  # one inference is one call at this batch size
    from edgekit.runtime.bundle import default_threads  # already loaded: the bundle came from it

    return {
        "bundle": str(folder),
        "model_sha256": sha256_file(files[0]) if len(files) == 1 else {p.name: sha256_file(p) for p in files},
        "size_bytes": bundle.manifest.model_bytes(folder),
        "load_ms": load_ms,
        "first_inference_ms": latency["first_inference_ms"],
        **_latency_fields(latency),
        "runs": latency["runs"],
        "batch_size": latency["batch_size"],
        "warmup": {"runs": latency["warmup_runs"], "mean_ms": latency["warmup_mean_ms"]},
        "invalid_reasons": invalid,
        "unstable": latency["unstable"],
        "cv": latency["cv"],
        "robust_spread": latency["robust_spread"],
        "throughput": throughput,
        "scenario": scenario["name"],
        **extra,
        "energy_mj_per_inference": measured_energy["energy_mj_per_inference"],
        "energy": measured_energy,
        "inputs": "real" if items else "synthetic",
        **(
            {"sequence_length": synthetic_length(bundle, profile.sequence_length)}
            if not items and bundle.encode.spec.modality != "image"
            else {}
        ),
        "peak_rss_bytes": peak_rss_bytes(),
        "model_memory_bytes": rss_loaded - rss_before,
        "providers": bundle.session.get_providers(),
        "threads": profile.threads or default_threads(),  # 0: the runtime's default, every core
    }


def _time_batches(bundle, items, batch_sizes: list[int], runs: int, tokens, profile):
    """The timed loop at each batch size: throughput per batch size, the first batch size's latency
    statistics (and its step, which energy is measured with), and for encoder-decoders its per-token
    generation figures."""
    from edgekit.bench.harness import time_loop

    throughput: dict[str, Any] = {}
    latency = first_step = generation = None
    for batch in batch_sizes:
        feeds, records = _feeds(bundle, items, batch, profile), []
        step = _stepper(bundle, feeds, tokens, records)
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
            latency, first_step = {**stats, "batch_size": batch}, step
            if bundle.encode.spec.generates:
                generation = _generation(records, stats["runs"], tokens, batch, bundle, feeds)
    return throughput, latency, first_step, generation


def _invalid_reasons(latency: dict[str, Any], runs: int, profile) -> list[str]:
    """Why the latency run is not valid by the profile's rules (empty: it is)."""
    invalid = list(latency["invalid_reasons"])
    if latency["stopped_by_time_limit"]:
        invalid.append(f"stopped at max_seconds={profile.max_seconds} before {runs} runs")
    if latency["stopped_by_max_runs"]:
        invalid.append(f"stopped at the cap of {latency['runs']} runs before {runs} runs")
    return invalid


def _server(scenario: dict[str, Any], step, latency: dict[str, Any]) -> dict[str, Any]:
    """A server run at a fixed rate, or the search for the highest rate that holds the p99 bound."""
    from edgekit.bench.stats import find_server_rate, server_run

    bound, duration = scenario.get("p99_bound_ms"), scenario["duration"]
    if scenario.get("rate"):
        _log(f"server: {scenario['rate']:g} queries/s for {duration:g} s")
        return server_run(step, scenario["rate"], duration, p99_bound_ms=bound)
    # no rate holding the bound is a finding, not a broken measurement: the result stays valid
    return find_server_rate(step, bound, duration, service_ms=latency["p50"], progress=_log)


def _offline(folder: Path, config: dict[str, Any], profile, items, loaded) -> dict[str, Any]:
    """Throughput (items/s) over batch sizes and thread counts; the best of them."""
    from edgekit.bench.harness import time_loop
    from edgekit.bench.stats import offline_threads

    given = config.get("batch_sizes")
    batches = list(given) if given and len(given) > 1 else [1, 8, 32]
    cells = []
    for threads in offline_threads():
        bundle = loaded if threads == profile.threads else _open(folder, config, profile, threads)
        for batch in batches:
            stats = time_loop(
                _stepper(bundle, _feeds(bundle, items, batch, profile), _tokens(config, profile)),
                warmup=3,
                runs=10,
                min_seconds=min(profile.min_seconds, 1.0),
                max_seconds=profile.max_seconds,
            )
            cells.append(
                {
                    "threads": threads,
                    "batch_size": batch,
                    "items_per_second": batch * 1e3 / stats["mean"],
                    "p50_ms": stats["p50"],
                    "runs": stats["runs"],
                }
            )
            _log(f"offline: {threads} thread(s), batch {batch}: {cells[-1]['items_per_second']:.1f} items/s")
    best = max(cells, key=lambda c: c["items_per_second"])
    return {"scenario": "offline", "best": best, "cells": cells}


ROUND_MS = 10.0  # how long a --compare round runs each bundle (when --rounds is not given)


def measure_compare(config: dict[str, Any]) -> dict[str, Any]:
    """The bundles in one process, timed in interleaved rounds; each one's ratio to the first."""
    from edgekit.bench.harness import summarize
    from edgekit.bench.profiles import Profile
    from edgekit.bench.stats import interleaved_rounds, ratio_verdict

    profile = Profile.from_json(config["profile"])
    folders = [Path(b) for b in config["bundles"]]
    items = config.get("items")
    batch = (config.get("batch_sizes") or profile.batch_sizes)[0]
    runs = config.get("runs") or profile.runs
    compare = config["compare"]
    names = _distinct_names(folders)
    bundles = {name: _open(folder, config, profile) for name, folder in zip(names, folders)}
    tokens = _tokens(config, profile)
    steps = {name: _stepper(b, _feeds(b, items, batch, profile), tokens) for name, b in bundles.items()}
    rounds, per_round = _round_plan(steps, profile, compare, runs)
    _log(f"compare: {rounds} interleaved rounds of {per_round} runs of each bundle, batch {batch}")
    timings = interleaved_rounds(steps, rounds=rounds, per_round=per_round, warmup=0)
    results = []
    for name, folder in zip(names, folders):
        flat = [t for r in timings[name] for t in r]
        stats = summarize(flat)
        results.append(
            {
                "name": name,
                "bundle": str(folder),
                "size_bytes": bundles[name].manifest.model_bytes(folder),
                **_latency_fields(stats),
                "runs": stats["runs"],
                "batch_size": batch,
                "invalid_reasons": stats["invalid_reasons"],
                "unstable": stats["unstable"],
                "providers": bundles[name].session.get_providers(),
                "inputs": "real" if items else "synthetic",
            }
        )
    verdicts = [
        ratio_verdict(timings[names[0]], timings[name], baseline=names[0], other=name, min_effect=compare["min_effect"])
        for name in names[1:]
    ]
    return {
        "compare": {
            "rounds": rounds,
            "runs_per_round": per_round,
            "batch_size": batch,
            "ratios": verdicts,
            # a seq2seq run is one generation of this many tokens
            "output_tokens": tokens if any(b.encode.spec.generates for b in bundles.values()) else None,
        },
        "results": results,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _distinct_names(folders: list[Path]) -> list[str]:
    """Each bundle's folder name, primed until unique (two folders called ``b``: ``b`` and ``b'``)."""
    names: list[str] = []
    for folder in folders:
        name = folder.name
        while name in names:
            name += "'"
        names.append(name)
    return names


def _round_plan(steps, profile, compare: dict[str, Any], runs: int) -> tuple[int, int]:
    """Warm every step up (which also times one run of each), then how many interleaved rounds, and runs of
    each bundle per round, the comparison takes."""
    # The warm-up says how long a run takes. A round runs each bundle for about ROUND_MS (at
    # least 5 runs), so that drift slower than a few tens of milliseconds cancels in its ratio; there are
    # at least 20 rounds, at least `runs` runs of each bundle, and min_seconds in all (at most max_seconds)
    cost_ms = {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(max(profile.warmup, 1)):
            step()
        cost_ms[name] = (time.perf_counter() - t0) * 1e3 / max(profile.warmup, 1)
    slowest, total = max(cost_ms.values()), sum(cost_ms.values())
    if compare.get("rounds"):
        rounds = compare["rounds"]
        per_round = max(5, -(-runs // rounds), math.ceil(profile.min_seconds * 1e3 / (rounds * total)))
    else:
        per_round = max(5, math.ceil(ROUND_MS / slowest))
        rounds = max(20, -(-runs // per_round), math.ceil(profile.min_seconds * 1e3 / (per_round * total)))
    rounds = max(2, min(rounds, int(profile.max_seconds * 1e3 / (per_round * total))))
    return rounds, per_round


def main(path: str) -> int:
    config = json.loads(Path(path).read_text())
    try:
        result = measure_compare(config) if config.get("compare") else measure(config)
    except Exception as exc:  # reported to the parent as an incomplete result, never as a valid one
        from edgekit.errors import EdgekitError

        message = str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}"
        sys.stdout.write(json.dumps({"error": message}) + "\n")  # the parent reads one JSON line
        return 1
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
