"""Bench one or more bundles on a device profile, each in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
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
) -> dict[str, Any]:
    profile = load_profile(device)
    providers = check_providers(profile)
    for bundle in bundles:
        read_manifest(bundle)  # fail before measuring anything
    results = []
    for index, bundle in enumerate(bundles):
        if index and profile.cooldown_seconds:
            log.info(f"bench: cooling down {profile.cooldown_seconds} s")
            time.sleep(profile.cooldown_seconds)
        log.info(f"bench: {bundle} on {profile.name}")
        results.append(_bench_one(Path(bundle), profile, providers, items, runs, batch_sizes, timeout_s))
    document = {
        "schema_version": SCHEMA_VERSION,
        "device": profile.name,
        "profile": profile.to_json(),
        "valid": all(r["valid"] for r in results),
        "results": results,
    }
    return document


def _bench_one(
    bundle: Path, profile: Profile, providers: list[str], items, runs, batch_sizes, timeout_s
) -> dict[str, Any]:
    sensors = list(profile.thermal_sensors)
    before = env.capture(sensors)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as scratch:
        config_path = Path(scratch) / "config.json"
        config_path.write_text(
            json.dumps(
                {
                    "bundle": str(bundle.resolve()),
                    "profile": profile.to_json(),
                    "providers": providers,
                    "items": items,
                    "runs": runs,
                    "batch_sizes": batch_sizes,
                },
                default=str,
            )
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "edgekit.bench.worker", str(config_path)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            lines = proc.stdout.strip().splitlines()
            raw = json.loads(lines[-1]) if lines else {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        except subprocess.TimeoutExpired:
            raw = {"error": f"timed out after {timeout_s:.0f} s"}
        except json.JSONDecodeError:
            raw = {"error": f"benchmark process printed no result (exit code {proc.returncode})"}
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
    result["quantization"] = manifest.quant_mode
    result["format"], result["precision"] = manifest.format, manifest.precision
    result["parameters"] = manifest.parameters
    result["environment"] = {
        **before,
        "temperatures_after_c": after["temperatures_c"],
        "throttling_after": after["throttling"],
    }
    return result


def markdown_table(document: dict[str, Any]) -> str:
    rows = [
        "| bundle | valid | size (MB) | p50 (ms) | p90 (ms) | p99 (ms) | mean (ms) | peak RSS (MB) | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in document["results"]:
        if "latency_ms" not in r:
            rows.append(f"| {r['name']} | no: {r.get('error', '')} | | | | | | | |")
            continue
        lat = r["latency_ms"]
        valid = "yes" if r["valid"] else "no: " + "; ".join(r["invalid_reasons"])
        flag = " (unstable)" if r.get("unstable") else ""
        rows.append(
            f"| {r['name']} | {valid}{flag} | {r['size_mb']:.2f} | {lat['p50']:.3f} | {lat['p90']:.3f} | "
            f"{lat['p99']:.3f} | {lat['mean']:.3f} | {r['peak_rss_mb']:.1f} | {r['runs']} |"
        )
    return "\n".join(rows)
