"""Device profiles: named YAML files in the top-level devices/ folder (shipped in the wheel)."""

from __future__ import annotations

import math
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.recipe import shown
from edgekit.resources import list_named, load_named_yaml

DEFAULTS: dict[str, Any] = {
    "threads": 0,
    "providers": ["CPUExecutionProvider"],
    "optional_providers": [],
    "graph_optimization": "all",
    "export_preset": "cpu-int8",
    "warmup": 10,
    "runs": 100,
    "min_seconds": 2.0,
    "max_seconds": 60.0,
    "batch_sizes": [1],
    "sequence_length": 128,
    "cooldown_seconds": 0,
    "thermal_sensors": [],
    "emulate": None,  # {cpu: cortex-a72}: the QEMU CPU model of the emulated target (edgekit devices emulate)
}


def load_profile(name: str) -> dict[str, Any]:
    profile = {**DEFAULTS, **load_named_yaml("devices", name, "device")}
    unknown = set(profile) - set(DEFAULTS) - {"name", "description", "install_hint", "_path"}
    if unknown:
        raise EdgekitError(
            f"device profile {profile['name']}: unknown settings {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(DEFAULTS))}"
        )
    where = f"device profile {profile['name']}"
    for key, low in (("warmup", 0), ("runs", 1), ("threads", 0), ("sequence_length", 1)):
        value = profile[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EdgekitError(f"{where}: {key} must be a whole number >= {low}, not {shown(value)}")
    for key, low in (("min_seconds", 0), ("max_seconds", 0), ("cooldown_seconds", 0)):
        value = profile[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise EdgekitError(f"{where}: {key} must be a finite number of seconds >= {low}, not {shown(value)}")
    if profile["max_seconds"] <= 0 or profile["max_seconds"] < profile["min_seconds"]:
        raise EdgekitError(
            f"{where}: max_seconds ({profile['max_seconds']}) must be > 0 and at least min_seconds "
            f"({profile['min_seconds']})"
        )
    sizes = profile["batch_sizes"]
    if (
        not isinstance(sizes, list)
        or not sizes
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes)
    ):
        raise EdgekitError(f"{where}: batch_sizes must be a list of whole numbers >= 1, not {shown(sizes)}")
    for key in ("providers", "optional_providers", "thermal_sensors"):
        if not isinstance(profile[key], list) or not all(isinstance(v, str) for v in profile[key]):
            raise EdgekitError(f"{where}: {key} must be a list of names, not {shown(profile[key])}")
    if not profile["providers"]:
        raise EdgekitError(f"{where}: providers must list at least one onnxruntime provider")
    if profile["graph_optimization"] not in ("disable", "basic", "extended", "all"):
        raise EdgekitError(
            f"{where}: graph_optimization {shown(profile['graph_optimization'])} is not one of "
            "disable, basic, extended, all"
        )
    if profile["emulate"] is not None and not isinstance(profile["emulate"], dict):
        raise EdgekitError(f"{where}: emulate must be a mapping such as {{cpu: cortex-a72}}")
    return profile


def list_profiles() -> list[str]:
    return list_named("devices")


def check_providers(profile: dict[str, Any]) -> list[str]:
    """The providers to use, in order; a clear error when a required one is missing here."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    missing = [p for p in profile["providers"] if p not in available]
    if missing:
        hint = profile.get("install_hint") or "install an onnxruntime build that has it"
        raise EdgekitError(
            f"device profile {profile['name']} needs {', '.join(missing)}, which this onnxruntime "
            f"({onnxruntime.__version__}: {', '.join(available)}) lacks; {hint}"
        )
    optional = [p for p in profile.get("optional_providers", []) if p in available]
    return optional + list(profile["providers"])
