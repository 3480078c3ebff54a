"""Device profiles: named YAML files in the top-level devices/ folder (shipped in the wheel)."""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError
from edgekit.resources import list_named, load_named_yaml

DEFAULTS: dict[str, Any] = {
    "threads": 0, "providers": ["CPUExecutionProvider"], "optional_providers": [], "graph_optimization": "all",
    "export_preset": "cpu-int8", "warmup": 10, "runs": 100, "min_seconds": 2.0, "max_seconds": 60.0,
    "batch_sizes": [1], "sequence_length": 128, "cooldown_seconds": 0, "thermal_sensors": [],
    "emulate": None,  # {cpu: cortex-a72}: the QEMU CPU model of the emulated target (edgekit devices emulate)
}


def load_profile(name: str) -> dict[str, Any]:
    profile = {**DEFAULTS, **load_named_yaml("devices", name, "device")}
    unknown = set(profile) - set(DEFAULTS) - {"name", "description", "install_hint", "_path"}
    if unknown:
        raise EdgekitError(f"device profile {profile['name']}: unknown settings {', '.join(sorted(unknown))}; "
                           f"allowed: {', '.join(sorted(DEFAULTS))}")
    for key in ("warmup", "runs", "threads", "sequence_length"):
        if not isinstance(profile[key], int) or profile[key] < 0:
            raise EdgekitError(f"device profile {profile['name']}: {key} must be a whole number >= 0")
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
