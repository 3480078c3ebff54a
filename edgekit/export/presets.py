"""Export presets: named YAML files in the top-level export/ folder (shipped in the wheel)."""

from __future__ import annotations

import copy
import math
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgekit import registry
from edgekit.errors import EdgekitError
from edgekit.recipe import shown
from edgekit.resources import load_named_yaml

OPTIMIZE = ("auto", "fused", "none", "timed")
ENGINES = ("auto", "x86", "fbgemm", "qnnpack")


def default_preset(fmt: str, precision: str) -> str | None:
    """The preset a format's entry names for ``precision`` (``--format X --int8`` without --preset)."""
    return (registry.get("format", fmt).can("presets") or {}).get(precision)


SCHEMA_VERSION = 1
PARITY_DEFAULTS = {"fp32_atol": 1e-3, "fp32_rtol": 1e-3, "min_agreement": 0.97, "min_snr_db": 10.0}
QUANT_DEFAULTS = {
    "mode": "auto",
    "per_channel": True,
    "reduce_range": "auto",
    "calibrate_method": "minmax",
    "first_conv_fp32": True,  # static int8: the convolution reading the image stays fp32
    "bias_correction": True,  # static int8: the logits' mean int8 shift on calibration data removed
    "engine": "auto",
    # int4 (weight-only, ONNX): MatMul weights in blocks of block_size input channels, each with its own
    # scale (and zero point unless symmetric), run by onnxruntime's MatMulNBits; accuracy_level 4 lets it
    # quantize the activations to int8 at run time (its fastest CPU kernels), 0 computes in fp32
    "block_size": 64,
    "symmetric": False,
    "accuracy_level": 4,
    # word/position embeddings: auto (int8 with --int8, int4 with --int4), int8, int4 (block-wise,
    # GatherBlockQuantized; ONNX opset 21+), or fp32
    "embeddings": "auto",
}
EMBEDDINGS = ("auto", "int8", "int4", "fp32")
INT4_OPSET = 21  # the first opset with int4 tensors
INT4_ON_CNN = "int4 is weight-only for matrix products; a CNN's weights are convolutions: use --int8"


@dataclass
class Preset:
    """An export preset, validated: the format, precision, quantization and parity gate of a bundle.
    ``quantization`` and ``parity`` are complete sections (every key present, checked)."""

    name: str
    format: str = "onnx"
    precision: str = "int8"
    opset: int = 18
    optimize: str = "auto"
    quantization: dict[str, Any] = field(default_factory=lambda: dict(QUANT_DEFAULTS))
    parity: dict[str, float] = field(default_factory=lambda: dict(PARITY_DEFAULTS))
    calib_samples: int = 256
    target: dict[str, Any] | None = None  # {machine: aarch64, devices: [rpi4, rpi5]}: where its int8 runs
    kv_cache: bool = True  # encoder-decoders: a cached decoder step where the format and model allow
    # the most validation accuracy (percentage points) quantization may cost; over it, the most sensitive
    # weights go back to higher precision (edgekit.export.budget); null: the parity gate alone decides
    max_drop: float | None = None
    description: str = ""
    schema_version: int = SCHEMA_VERSION
    path: str | None = field(default=None, compare=False)  # the YAML file it was read from

    @property
    def target_machine(self) -> str | None:
        return (self.target or {}).get("machine")

    def to_json(self) -> dict[str, Any]:
        """The settings (what an export stage's config records, and fingerprints)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "path"}


def load_preset(
    name: str | None, fmt: str | None = None, precision: str | None = None, mode: str | None = None
) -> Preset:
    """A preset by name (or the default for ``fmt`` and ``precision``); explicit ``precision`` and
    quantization ``mode`` override the preset's."""
    formats, precisions = registry.names("format"), registry.names("precision")
    if fmt is not None and fmt not in formats:
        raise EdgekitError(f"--format {fmt!r} is not one of {', '.join(formats)}")
    if precision is not None and precision not in precisions:
        raise EdgekitError(f"precision {precision!r} is not one of {', '.join(precisions)}")
    if name is None:
        name = default_preset(fmt or "onnx", precision or "int8")
        if name is None:
            writer = registry.get("format", fmt or "onnx")
            raise EdgekitError(
                f"{fmt} export has no {precision} mode ({writer.can('title')} on CPU: --int8 or --fp32); "
                "for fp16 use --format onnx --fp16"
            )
    data = load_named_yaml("export", name, "export preset")
    path = data.pop("_path", None)
    legacy_int8 = data.pop("int8", None)
    data.setdefault("precision", "fp32" if legacy_int8 is False else "int8")
    where = f"export preset {data['name']}"
    allowed = [f.name for f in fields(Preset) if f.name != "path"]
    unknown = set(data) - set(allowed)
    if unknown:
        raise EdgekitError(f"{where}: unknown settings {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise EdgekitError(
            f"{where}: schema_version {shown(data['schema_version'])} is not one this edgekit reads "
            f"({SCHEMA_VERSION}); update edgekit or remove the line"
        )
    for key, defaults in (("quantization", QUANT_DEFAULTS), ("parity", PARITY_DEFAULTS)):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise EdgekitError(f"{where}: {key} must be a mapping of settings, not {shown(section)}")
        if set(section) - set(defaults):
            raise EdgekitError(
                f"{where}: unknown {key} settings {', '.join(sorted(map(str, set(section) - set(defaults))))}; "
                f"allowed: {', '.join(defaults)}"
            )
    data["quantization"] = {**QUANT_DEFAULTS, **(data.get("quantization") or {})}
    data["parity"] = {**PARITY_DEFAULTS, **(data.get("parity") or {})}
    preset = Preset(**data, path=path)
    if preset.format not in formats:
        raise EdgekitError(f"{where}: format {preset.format!r} is not one of {', '.join(formats)}")
    if fmt is not None and preset.format != fmt:
        raise EdgekitError(
            f"{where} writes {preset.format}, not {fmt}; use --preset "
            f"{default_preset(fmt, precision or 'int8') or default_preset(fmt, 'int8')} or drop --format"
        )
    if precision is not None:
        preset.precision = precision
    if mode is not None:
        preset.quantization["mode"] = mode
    check_preset(preset)
    return preset


def check_preset(preset: Preset) -> None:
    """Every setting of ``preset`` valid, alone and together (after --precision/--static overrides)."""
    where = f"export preset {preset.name}"
    _check_format(preset, where)
    _check_quantization(preset, where)
    _check_settings(preset, where)
    _check_int4(preset, where)
    _check_max_drop(preset, where)


def _check_format(preset: Preset, where: str) -> None:
    """A registered format and precision, one the format's writer has."""
    if preset.format not in registry.names("format"):
        raise EdgekitError(f"{where}: format {preset.format!r} is not one of {', '.join(registry.names('format'))}")
    if preset.precision not in registry.names("precision"):
        raise EdgekitError(
            f"{where}: precision {preset.precision!r} is not one of {', '.join(registry.names('precision'))}"
        )
    if not isinstance(preset.kv_cache, bool):
        raise EdgekitError(f"{where}: kv_cache must be true or false, not {shown(preset.kv_cache)}")
    writer = registry.get("format", preset.format)
    if preset.precision not in writer.can("precisions"):
        if preset.format == "torchscript" and preset.precision == "fp16":
            raise EdgekitError(
                "TorchScript export has no fp16 mode (CPUs run it slower than fp32); "
                "for a GPU use --format onnx --fp16 (preset t4-fp16)"
            )
        raise EdgekitError(
            f"{writer.can('title')} export has no {preset.precision} mode; use {', '.join(writer.can('precisions'))}"
        )


def _check_quantization(preset: Preset, where: str) -> None:
    """The quantization mode, engine and optimize level among the known ones, its switches true or false."""
    quant = preset.quantization
    for key, value, allowed in (
        ("quantization.mode", quant["mode"], registry.names("quant-mode")),
        ("quantization.engine", quant["engine"], ENGINES),
        ("optimize", preset.optimize, OPTIMIZE),
    ):
        if value not in allowed:
            raise EdgekitError(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}")
    for key in ("per_channel", "first_conv_fp32", "bias_correction", "symmetric"):
        if not isinstance(quant[key], bool):
            raise EdgekitError(f"{where}: quantization.{key} is {quant[key]!r}; write true or false")
    if preset.format == "torchscript" and preset.precision == "int8" and quant["mode"] == "static":
        raise EdgekitError(
            "TorchScript int8 is dynamic (torch quantize_dynamic); for static int8 use --format onnx --static"
        )


def _check_settings(preset: Preset, where: str) -> None:
    """The target, the parity thresholds, opset, calibration size and description."""
    target = preset.target
    if target is not None and (
        not isinstance(target, dict)
        or not isinstance(target.get("machine"), str)
        or not isinstance(target.get("devices", []), list)
    ):
        raise EdgekitError(f"{where}: target must be a mapping with machine (e.g. aarch64) and a list of devices")
    for key, low, high in (
        ("fp32_atol", 0, 1e6),
        ("fp32_rtol", 0, 1e6),
        ("min_agreement", 0, 1),
        ("min_snr_db", -1e3, 1e3),
    ):
        value = preset.parity[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise EdgekitError(
                f"{where}: parity.{key} must be a finite number in [{low:g}, {high:g}], not {shown(value)}"
            )
    opset = preset.opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 23:
        raise EdgekitError(f"{where}: opset must be a whole number from 13 to 23, not {shown(opset)}")
    calib = preset.calib_samples
    if isinstance(calib, bool) or not isinstance(calib, int) or not 1 <= calib <= 100_000:
        raise EdgekitError(f"{where}: calib_samples must be a whole number from 1 to 100000, not {shown(calib)}")
    if not isinstance(preset.description, str):
        raise EdgekitError(f"{where}: description must be text, not {shown(preset.description)}")


def _check_max_drop(preset: Preset, where: str) -> None:
    """An accuracy budget in points, for an int8 or int4 ONNX bundle only."""
    drop = preset.max_drop
    if drop is not None and (
        isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop) or not 0 <= drop <= 100
    ):
        raise EdgekitError(
            f"{where}: max_drop must be a finite number of accuracy points from 0 to 100, not {shown(drop)} "
            "(e.g. --max-drop 0.5)"
        )
    if drop is not None and (preset.format != "onnx" or preset.precision not in ("int8", "int4")):
        raise EdgekitError(
            f"{where}: --max-drop plans int8 and int4 ONNX bundles; {preset.format} {preset.precision} has no "
            "per-layer precision to plan (drop --max-drop, or use --format onnx --int8/--int4)"
        )


def embedding_precision(preset: Preset) -> str:
    """What the word/position embeddings of an ONNX bundle are stored as: int8, int4 or fp32."""
    setting = preset.quantization["embeddings"]
    if setting != "auto":
        return setting
    return {"int4": "int4", "int8": "int8"}.get(preset.precision, "fp32")


def model_refusal(preset: Preset, *, convolutional: bool) -> str | None:
    """Why this preset cannot apply to a model of this kind (None when it can), judged before any export
    work: int4 has no convolution kernel."""
    if preset.precision == "int4" and convolutional:
        return INT4_ON_CNN
    return None


def _check_int4(preset: Preset, where: str) -> None:
    """The block-wise (int4) settings: sizes onnxruntime's kernels take, and int4 only where it exists."""
    quant = preset.quantization
    block = quant["block_size"]
    if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block > 256 or block & (block - 1):
        raise EdgekitError(f"{where}: quantization.block_size must be 16, 32, 64, 128 or 256, not {shown(block)}")
    level = quant["accuracy_level"]
    if isinstance(level, bool) or level not in (0, 1, 2, 3, 4):
        raise EdgekitError(
            f"{where}: quantization.accuracy_level must be 0 (fp32 compute) to 4 (int8 compute), not {shown(level)}"
        )
    if quant["embeddings"] not in EMBEDDINGS:
        raise EdgekitError(
            f"{where}: quantization.embeddings {shown(quant['embeddings'])} is not one of {', '.join(EMBEDDINGS)}"
        )
    if quant["embeddings"] != "auto" and (preset.format != "onnx" or preset.precision not in ("int8", "int4")):
        raise EdgekitError(
            f"{where}: quantization.embeddings {quant['embeddings']} applies to ONNX int8 and int4 bundles only; "
            "set it to auto"
        )
    if embedding_precision(preset) == "int4" or preset.precision == "int4":
        if preset.opset < INT4_OPSET:
            raise EdgekitError(
                f"{where}: int4 weights need ONNX opset {INT4_OPSET} or later (opset {preset.opset}); "
                f"use --preset cpu-int4 or set opset: {INT4_OPSET}"
            )
        if preset.precision == "int4" and preset.quantization["mode"] == "static":
            raise EdgekitError(f"{where}: int4 is weight-only (activations stay float); drop --static or use --int8")


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
