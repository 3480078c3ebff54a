"""Export presets: named YAML files in the top-level export/ folder (shipped in the wheel)."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.errors import EdgekitError
from edgekit.recipe import shown
from edgekit.resources import load_named_yaml

OPTIMIZE = ("auto", "fused", "none", "timed")
ENGINES = ("auto", "x86", "fbgemm", "qnnpack")
DEFAULT_PRESETS = {
    ("onnx", "int8"): "cpu-int8",
    ("onnx", "fp32"): "onnx-fp32",
    ("onnx", "fp16"): "t4-fp16",
    ("torchscript", "int8"): "torchscript-int8",
    ("torchscript", "fp32"): "torchscript-fp32",
}


def load_preset(
    name: str | None, fmt: str | None = None, precision: str | None = None, mode: str | None = None
) -> dict[str, Any]:
    """A preset by name (or the default for ``fmt`` and ``precision``); explicit ``precision`` and
    quantization ``mode`` override the preset's."""
    formats, precisions = registry.names("format"), registry.names("precision")
    if fmt is not None and fmt not in formats:
        raise EdgekitError(f"--format {fmt!r} is not one of {', '.join(formats)}")
    if precision is not None and precision not in precisions:
        raise EdgekitError(f"precision {precision!r} is not one of {', '.join(precisions)}")
    if name is None:
        name = DEFAULT_PRESETS.get((fmt or "onnx", precision or "int8"))
        if name is None:
            raise EdgekitError(
                f"{fmt} export has no {precision} mode (TorchScript on CPU: --int8 or --fp32); "
                "for fp16 use --format onnx --fp16"
            )
    preset = load_named_yaml("export", name, "export preset")
    legacy_int8 = preset.pop("int8", None)
    preset.setdefault("precision", "fp32" if legacy_int8 is False else "int8")
    preset.setdefault("opset", 18)
    preset.setdefault("format", "onnx")
    where = f"export preset {preset['name']}"
    if preset["format"] not in formats:
        raise EdgekitError(f"{where}: format {preset['format']!r} is not one of {', '.join(formats)}")
    if fmt is not None and preset["format"] != fmt:
        raise EdgekitError(
            f"{where} writes {preset['format']}, not {fmt}; use --preset "
            f"{DEFAULT_PRESETS.get((fmt, precision or 'int8'), 'torchscript-int8')} or drop --format"
        )
    if precision is not None:
        preset["precision"] = precision
    if preset["precision"] not in precisions:
        raise EdgekitError(f"{where}: precision {preset['precision']!r} is not one of {', '.join(precisions)}")
    if preset["format"] == "torchscript" and preset["precision"] == "fp16":
        raise EdgekitError(
            "TorchScript export has no fp16 mode (CPUs run it slower than fp32); "
            "for a GPU use --format onnx --fp16 (preset t4-fp16)"
        )
    quant = preset.setdefault("quantization", {})
    quant.setdefault("mode", "auto")
    if mode is not None:
        quant["mode"] = mode
    quant.setdefault("per_channel", True)
    quant.setdefault("reduce_range", "auto")
    quant.setdefault("calibrate_method", "minmax")
    quant.setdefault("first_conv_fp32", True)  # static int8: the convolution reading the image stays fp32
    quant.setdefault("bias_correction", True)  # static int8: the logits' mean int8 shift on calibration data removed
    quant.setdefault("engine", "auto")
    preset.setdefault("optimize", "auto")
    for key, value, allowed in (
        ("quantization.mode", quant["mode"], registry.names("quant-mode")),
        ("quantization.engine", quant["engine"], ENGINES),
        ("optimize", preset["optimize"], OPTIMIZE),
    ):
        if value not in allowed:
            raise EdgekitError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")
    for key in ("per_channel", "first_conv_fp32", "bias_correction"):
        if not isinstance(quant[key], bool):
            raise EdgekitError(f"{where}: quantization.{key} is {quant[key]!r}; write true or false")
    if preset["format"] == "torchscript" and preset["precision"] == "int8" and quant["mode"] == "static":
        raise EdgekitError(
            "TorchScript int8 is dynamic (torch quantize_dynamic); for static int8 use --format onnx --static"
        )
    target = preset.get("target")
    if target is not None:
        if (
            not isinstance(target, dict)
            or not isinstance(target.get("machine"), str)
            or not isinstance(target.get("devices", []), list)
        ):
            raise EdgekitError(f"{where}: target must be a mapping with machine (e.g. aarch64) and a list of devices")
    parity = preset.setdefault("parity", {})
    parity.setdefault("fp32_atol", 1e-3)
    parity.setdefault("fp32_rtol", 1e-3)
    parity.setdefault("min_agreement", 0.97)
    parity.setdefault("min_snr_db", 10.0)
    for key, low, high in (
        ("fp32_atol", 0, 1e6),
        ("fp32_rtol", 0, 1e6),
        ("min_agreement", 0, 1),
        ("min_snr_db", -1e3, 1e3),
    ):
        value = parity[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise EdgekitError(
                f"{where}: parity.{key} must be a finite number in [{low:g}, {high:g}], not {shown(value)}"
            )
    opset = preset["opset"]
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 23:
        raise EdgekitError(f"{where}: opset must be a whole number from 13 to 23, not {shown(opset)}")
    calib = preset.get("calib_samples", 256)
    if isinstance(calib, bool) or not isinstance(calib, int) or not 1 <= calib <= 100_000:
        raise EdgekitError(f"{where}: calib_samples must be a whole number from 1 to 100000, not {shown(calib)}")
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


def resolve_engine(setting: str) -> str:
    """torch's quantized engine: qnnpack on ARM, x86 (fbgemm + onednn) on x86."""
    if setting != "auto":
        return setting
    import torch

    if platform.machine().lower() in ("aarch64", "arm64", "armv7l"):
        return "qnnpack"
    return "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
