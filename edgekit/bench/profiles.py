"""Device profiles: named YAML files in the top-level devices/ folder (shipped in the wheel)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.recipe import shown
from edgekit.resources import list_named, load_named_yaml
from edgekit.runtime.bundle import GRAPH_LEVELS

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Profile:
    """A device profile, validated: how a bundle is run and timed on that device."""

    name: str
    description: str = ""
    install_hint: str | None = None
    threads: int = 0
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    optional_providers: tuple[str, ...] = ()
    graph_optimization: str = "all"
    export_preset: str = "cpu-int8"
    warmup: int = 10
    runs: int = 100
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    batch_sizes: tuple[int, ...] = (1,)
    sequence_length: int = 128
    output_tokens: int = 32  # tokens a seq2seq bundle generates per timed run (EOS does not stop it)
    cooldown_seconds: float = 0
    thermal_sensors: tuple[str, ...] = ()
    energy_meters: tuple[str, ...] = ("rapl", "nvml", "pmic")  # tried in order; see edgekit.bench.energy
    energy_seconds: float = 1.0  # idle, then active, this long each; 0 turns energy off
    emulate: dict[str, Any] | None = None  # {cpu: cortex-a72}: the QEMU CPU model of the emulated target
    schema_version: int = SCHEMA_VERSION
    path: str | None = field(default=None, compare=False)  # the YAML file it was read from

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        """A profile from its settings (a YAML file's, or one sent to a bench worker), checked."""
        settings = {k: v for k, v in data.items() if k != "_path"}
        name = str(settings.get("name", "?"))
        where = f"device profile {name}"
        allowed = [f.name for f in fields(cls) if f.name != "path"]
        unknown = set(settings) - set(allowed)
        if unknown:
            raise EdgekitError(
                f"{where}: unknown settings {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
            )
        if settings.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise EdgekitError(
                f"{where}: schema_version {shown(settings['schema_version'])} is not one this edgekit reads "
                f"({SCHEMA_VERSION}); update edgekit or remove the line"
            )
        profile = cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}, path=data.get("_path")
        )
        for key, low in (("warmup", 0), ("runs", 1), ("threads", 0), ("sequence_length", 1), ("output_tokens", 1)):
            value = getattr(profile, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise EdgekitError(f"{where}: {key} must be a whole number >= {low}, not {shown(value)}")
        for key, low in (("min_seconds", 0), ("max_seconds", 0), ("cooldown_seconds", 0), ("energy_seconds", 0)):
            value = getattr(profile, key)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < low
            ):
                raise EdgekitError(f"{where}: {key} must be a finite number of seconds >= {low}, not {shown(value)}")
        if profile.max_seconds <= 0 or profile.max_seconds < profile.min_seconds:
            raise EdgekitError(
                f"{where}: max_seconds ({profile.max_seconds}) must be > 0 and at least min_seconds "
                f"({profile.min_seconds})"
            )
        sizes = profile.batch_sizes
        if (
            not isinstance(sizes, tuple)
            or not sizes
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes)
        ):
            raise EdgekitError(
                f"{where}: batch_sizes must be a list of whole numbers >= 1, not {shown(settings['batch_sizes'])}"
            )
        for key in ("providers", "optional_providers", "thermal_sensors", "energy_meters"):
            value = getattr(profile, key)
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                raise EdgekitError(f"{where}: {key} must be a list of names, not {shown(settings[key])}")
        from edgekit.bench.energy import METERS

        unknown_meters = [m for m in profile.energy_meters if m not in METERS]
        if unknown_meters:
            raise EdgekitError(
                f"{where}: energy_meters {', '.join(unknown_meters)} unknown; choose from {', '.join(METERS)}"
            )
        if not profile.providers:
            raise EdgekitError(f"{where}: providers must list at least one onnxruntime provider")
        if profile.graph_optimization not in GRAPH_LEVELS:
            raise EdgekitError(
                f"{where}: graph_optimization {shown(profile.graph_optimization)} is not one of "
                f"{', '.join(GRAPH_LEVELS)}"
            )
        if profile.emulate is not None and not isinstance(profile.emulate, dict):
            raise EdgekitError(f"{where}: emulate must be a mapping such as {{cpu: cortex-a72}}")
        for key in ("description", "export_preset"):
            if not isinstance(getattr(profile, key), str):
                raise EdgekitError(f"{where}: {key} must be text, not {shown(getattr(profile, key))}")
        return profile

    def to_json(self) -> dict[str, Any]:
        """The settings, as a profile file writes them (what a bench worker or a device is sent)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def load_profile(name: str) -> Profile:
    """A shipped profile by name (``rpi4``) or a user's profile file, validated."""
    return Profile.from_json(load_named_yaml("devices", name, "device"))


def list_profiles() -> list[str]:
    return list_named("devices")


def check_providers(profile: Profile) -> list[str]:
    """The providers to use, in order; a clear error when a required one is missing here."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    missing = [p for p in profile.providers if p not in available]
    if missing:
        hint = profile.install_hint or "install an onnxruntime build that has it"
        raise EdgekitError(
            f"device profile {profile.name} needs {', '.join(missing)}, which this onnxruntime "
            f"({onnxruntime.__version__}: {', '.join(available)}) lacks; {hint}"
        )
    optional = [p for p in profile.optional_providers if p in available]
    return optional + list(profile.providers)
