"""Export presets: named YAML files in the top-level export/ folder (shipped in the wheel)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.resources import load_named_yaml

QUANT_MODES = ("auto", "dynamic", "static")


def load_preset(name: str | None, int8: bool) -> dict[str, Any]:
    preset = load_named_yaml("export", name or ("cpu-int8" if int8 else "onnx-fp32"), "export preset")
    preset.setdefault("opset", 18)
    preset.setdefault("format", "onnx")
    preset["int8"] = bool(int8)
    quant = preset.setdefault("quantization", {})
    quant.setdefault("mode", "auto")
    quant.setdefault("per_channel", True)
    quant.setdefault("reduce_range", "auto")
    quant.setdefault("calibrate_method", "minmax")
    if quant["mode"] not in QUANT_MODES:
        raise EdgekitError(f"export preset {preset['name']}: quantization.mode {quant['mode']!r} is not one of {', '.join(QUANT_MODES)}")
    parity = preset.setdefault("parity", {})
    parity.setdefault("fp32_atol", 1e-3)
    parity.setdefault("fp32_rtol", 1e-3)
    parity.setdefault("min_agreement", 0.97)
    parity.setdefault("min_snr_db", 10.0)
    return preset


def cpu_has_vnni() -> bool:
    """True where int8 dot products do not saturate (VNNI on x86; ARM's sdot/udot)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def resolve_reduce_range(setting: Any) -> bool:
    if setting == "auto":
        return not cpu_has_vnni()
    return bool(setting)
