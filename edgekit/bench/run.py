"""Bench one or more bundles on a device profile, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import log
from edgekit.bench import env
from edgekit.bench.profiles import Profile, check_providers, load_profile
from edgekit.records import read_manifest

SCHEMA_VERSION = 1
MB = 1e6


def _compressed_bytes(path: Path) -> int:
    import gzip

    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def bench_bundles(
    bundles: list[Path],
    device: str,
    *,
    items: list | None = None,
    runs: int | None = None,
    batch_sizes: list[int] | None = None,
    timeout_s: float = 900,
    scenario: dict[str, Any] | None = None,
    compare: dict[str, Any] | None = None,
    output_tokens: int | None = None,
) -> dict[str, Any]:
    """Bench ``bundles`` on ``device``: each in a process of its own, or with ``compare`` all in one
    process in interleaved rounds (see :mod:`edgekit.bench.stats`). A seq2seq bundle's run generates
    ``output_tokens`` tokens (default: the profile's)."""
    profile = load_profile(device)
    providers = check_providers(profile)
    for bundle in bundles:
        read_manifest(bundle)  # fail before measuring anything
    job = _Job(profile, providers, items, runs, batch_sizes, timeout_s, output_tokens)
    if compare:
        return _compare(bundles, job, compare)
    results = []
    for index, bundle in enumerate(bundles):
        if index and profile.cooldown_seconds:
            log.info(f"bench: cooling down {profile.cooldown_seconds} s")
            time.sleep(profile.cooldown_seconds)
        log.info(f"bench: {bundle} on {profile.name}")
        results.append(_bench_one(Path(bundle), job, scenario))
    document = {
        "schema_version": SCHEMA_VERSION,
        "device": profile.name,
        "profile": profile.to_json(),
        "valid": all(r["valid"] for r in results),
        "results": results,
    }
    return document


# progress lines the worker writes to stderr, shown as they come (everything else is kept for errors)
_PROGRESS = ("server:", "offline:", "compare:")


@dataclass(frozen=True)
class _Job:
    """What every bundle of one bench call is measured with: the profile, providers, inputs, runs."""

    profile: Profile
    providers: list[str]
    items: list | None
    runs: int | None
    batch_sizes: list[int] | None
    timeout_s: float
    output_tokens: int | None

    def measure(self, **what: Any) -> dict[str, Any]:
        """The bench worker's result for ``what`` (a bundle and scenario, or bundles to compare)."""
        config = {
            "profile": self.profile.to_json(),
            "providers": self.providers,
            "items": self.items,
            "runs": self.runs,
            "batch_sizes": self.batch_sizes,
            "output_tokens": self.output_tokens,
            **what,
        }
        return _worker(config, self.timeout_s)


def _described(result: dict[str, Any], manifest) -> dict[str, Any]:
    """``result`` with what the bundle is: format, precision, quantization, parameters."""
    result.update(
        format=manifest.format,
        precision=manifest.precision,
        quantization=manifest.quant_mode,
        parameters=manifest.parameters,
    )
    return result


def _worker(config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run the bench worker on ``config`` in a fresh process; its JSON result, or {"error": why}."""
    import threading

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        config_path = Path(scratch) / "config.json"
        config_path.write_text(json.dumps(config, default=str))
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.bench.worker", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        errors: list[str] = []

        def relay() -> None:
            for line in proc.stderr:
                line = line.rstrip()
                if line.startswith(_PROGRESS):
                    log.info(f"bench: {line}")
                elif line:
                    errors.append(line)

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, stop)
        timer.start()
        try:
            stdout = proc.stdout.read()
            proc.wait()
        except BaseException:  # Ctrl-C: the measuring process goes with us
            proc.kill()
            raise
        finally:
            timer.cancel()
            reader.join(timeout=5)
        if timed_out.is_set():
            return {"error": f"timed out after {timeout_s:.0f} s"}
        lines = stdout.strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {"error": (errors or ["no output"])[-1]}
        except json.JSONDecodeError:
            return {"error": f"benchmark process printed no result (exit code {proc.returncode})"}


def _bench_one(bundle: Path, job: _Job, scenario=None) -> dict[str, Any]:
    profile = job.profile
    sensors = list(profile.thermal_sensors)
    before = env.capture(sensors)
    raw = job.measure(bundle=str(bundle.resolve()), scenario=scenario)
    after = env.capture(sensors)
    manifest = read_manifest(bundle)
    result = {"bundle": str(bundle), "device": profile.name, "name": bundle.name}
    if "error" in raw:
        result.update(valid=False, error=raw["error"], invalid_reasons=[raw["error"]])
    else:
        result.update(raw)
        result["valid"] = not raw["invalid_reasons"]
        result["size_mb"] = raw["size_bytes"] / MB
        result["compressed_size_mb"] = sum(_compressed_bytes(bundle / g.file) for g in manifest.graphs) / MB
        result["peak_rss_mb"] = raw["peak_rss_bytes"] / MB
        result["model_memory_mb"] = raw["model_memory_bytes"] / MB
    _described(result, manifest)
    result["size_breakdown"] = _breakdown_mb((manifest.sizes or {}).get("breakdown"))  # where the bytes go
    result["environment"] = {
        **before,
        "temperatures_after_c": after["temperatures_c"],
        "throttling_after": after["throttling"],
    }
    return result


def _breakdown_mb(sizes: dict[str, Any] | None) -> dict[str, Any] | None:
    """The manifest's size breakdown in MB: the whole bundle, the model's components, each file."""
    if not sizes:
        return None
    out: dict[str, Any] = {"bundle_mb": round(sizes["bundle_bytes"] / MB, 4)}
    if sizes.get("components"):
        out["components_mb"] = {k: round(v / MB, 4) for k, v in sizes["components"].items()}
    out["files_mb"] = {k: round(v / MB, 4) for k, v in sizes.get("files", {}).items()}
    return out


def _compare(bundles, job: _Job, compare: dict[str, Any]) -> dict[str, Any]:
    profile = job.profile
    before = env.capture(list(profile.thermal_sensors))
    raw = job.measure(bundles=[str(Path(b).resolve()) for b in bundles], compare=compare)
    document: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "device": profile.name, "profile": profile.to_json()}
    if "error" in raw:
        reason = raw["error"]
        results = [
            {"bundle": str(b), "name": Path(b).name, "valid": False, "error": reason, "invalid_reasons": [reason]}
            for b in bundles
        ]
        return {**document, "valid": False, "error": reason, "results": results}
    results = []
    for result, bundle in zip(raw["results"], bundles):
        result.update(
            bundle=str(bundle),
            device=profile.name,
            valid=not result["invalid_reasons"],
            size_mb=result["size_bytes"] / MB,
            peak_rss_mb=None,  # the bundles share one process: memory is not theirs alone
        )
        results.append(_described(result, read_manifest(bundle)))
    return {
        **document,
        "valid": all(r["valid"] for r in results),
        "results": results,
        "compare": {**raw["compare"], "peak_rss_mb_all": raw["peak_rss_bytes"] / MB},
        "environment": before,
    }


def _interval(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def markdown_table(document: dict[str, Any]) -> str:
    """The bench results as a markdown table, then the scenario and comparison lines (units in each)."""
    rows = [
        "| bundle | valid | size (MB) | p50 (ms) [95% CI] | p90 (ms) | p99 (ms) | mean (ms) | peak RSS (MB) "
        "| energy (mJ/inference) | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in document["results"]:
        if "latency_ms" not in r:
            rows.append(f"| {r['name']} | no: {r.get('error', '')} | | | | | | | | |")
            continue
        lat = r["latency_ms"]
        valid = "yes" if r["valid"] else "no: " + "; ".join(r["invalid_reasons"])
        flag = " (unstable)" if r.get("unstable") else ""
        ci = (r.get("latency_ci95_ms") or {}).get("p50")
        rss = f"{r['peak_rss_mb']:.1f}" if r.get("peak_rss_mb") is not None else "shared"
        energy = r.get("energy_mj_per_inference")
        rows.append(
            f"| {r['name']} | {valid}{flag} | {r['size_mb']:.2f} | {lat['p50']:.3f}{_interval(ci)} | {lat['p90']:.3f} | "
            f"{lat['p99']:.3f} | {lat['mean']:.3f} | {rss} | {'' if energy is None else f'{energy:.3f}'} | {r['runs']} |"
        )
        if energy is None and (r.get("energy") or {}).get("reason"):
            notes.append(f"{r['name']}: energy not measured: {r['energy']['reason']}")
        elif energy is not None:
            e = r["energy"]
            notes.append(
                f"{r['name']}: {energy:.3f} mJ per inference by {e['meter']} "
                f"({e['active_watts']:.2f} W running, {e['idle_watts']:.2f} W idle subtracted)"
            )
        notes += _scenario_lines(r)
    compared = document.get("compare") or {}
    per_run = f", a run generates {compared['output_tokens']} tokens" if compared.get("output_tokens") else ""
    for ratio in compared.get("ratios", []):
        notes.append(f"compare ({compared['rounds']} interleaved rounds{per_run}, 95% CI): {ratio['verdict']}")
    return "\n".join(rows + ([""] + notes if notes else []))


def _generation_line(name: str, g: dict[str, Any]) -> str:
    """A seq2seq result's line: time to first token, per-token latency and tokens/s (units in each)."""
    first, first_ci = g["time_to_first_token_ms"], g["time_to_first_token_ci95_ms"]
    per = g["per_token_ms"]
    per_text = (
        f"{per['p50']:.3f} ms per token p50{_interval(g['per_token_ci95_ms']['p50'])} "
        f"(p90 {per['p90']:.3f} ms, p99 {per['p99']:.3f} ms, {g['per_token_samples']} tokens)"
        if per
        else g.get("per_token_reason", "")
    )
    cache = "with the KV cache" if g["kv_cache"] else "without a KV cache (the decoder re-runs every token)"
    return (
        f"{name}: generation of {g['output_tokens']} tokens from {g['input_tokens']:.0f} input tokens, batch "
        f"{g['batch_size']}, {cache}: first token {first['p50']:.3f} ms p50{_interval(first_ci['p50'])}, "
        f"{per_text}, {g['tokens_per_second']:.1f} tokens/s"
    )


def _scenario_lines(result: dict[str, Any]) -> list[str]:
    name = result["name"]
    server, offline = result.get("server"), result.get("offline")
    lines = [_generation_line(name, result["generation"])] if result.get("generation") else []
    if server and "max_rate_qps" in server:  # a search for the highest rate
        if server["max_rate_qps"] is None:
            lines.append(f"{name}: server: {server['reason']}")
        else:
            best = server["best"]
            lines.append(
                f"{name}: server: highest rate holding p99 <= {server['p99_bound_ms']:g} ms: "
                f"{server['max_rate_qps']:.1f} queries/s (p99 {best['latency_ms']['p99']:.3f} ms, "
                f"{best['queries']} queries; capacity {server['capacity_qps']:.1f} queries/s)"
            )
    elif server:
        p99 = server["latency_ms"]["p99"]
        held = (
            ""
            if server.get("holds") is None
            else (" holds" if server["holds"] else " misses") + f" the {server['p99_bound_ms']:g} ms bound"
        )
        lines.append(
            f"{name}: server at {server['target_rate_qps']:g} queries/s for {server['duration_s']:g} s: "
            f"p50 {server['latency_ms']['p50']:.3f} ms, p99 {'-' if p99 is None else f'{p99:.3f}'} ms{held} "
            f"({server['queries']} queries)"
        )
    if offline:
        best = offline["best"]
        lines.append(
            f"{name}: offline: best {best['items_per_second']:.1f} items/s at batch {best['batch_size']}, "
            f"{best['threads']} thread(s) ({len(offline['cells'])} settings tried)"
        )
    return lines
