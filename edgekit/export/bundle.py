"""The export stage: a model stage folder in, a parity-checked bundle out.

Bundle layout: model.onnx, manifest.json (format, opset, inputs, labels, preprocessing,
quantization, sizes, sha256, lineage, parity, versions), tokenizer.json for text, meta.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit import __version__
from edgekit.artifacts import read_meta, sha256_file
from edgekit.data.splits import Split
from edgekit.errors import EdgekitError
from edgekit.export.onnx import export_fp32, quantize
from edgekit.export.presets import resolve_reduce_range
from edgekit.metrics import agreement, snr_db
from edgekit.models.handle import ModelHandle
from edgekit.runtime.bundle import MANIFEST, MODEL_FILE, TOKENIZER_FILE, Encoder
from edgekit.runtime.validate import run_isolated


def lineage(stage_dir: Path | None) -> list[dict[str, Any]]:
    """The chain of stages that produced ``stage_dir``, newest first, back to the teacher."""
    chain, seen = [], set()
    current = Path(stage_dir) if stage_dir else None
    while current is not None and (current / "meta.json").is_file() and str(current) not in seen:
        seen.add(str(current))
        meta = read_meta(current)
        chain.append({"stage": meta.get("stage"), "path": str(current.resolve()), "fingerprint": meta.get("fingerprint"),
                      "model": meta.get("config", {}).get("model"), "metrics": {
                          k: v for k, v in meta.get("metrics", {}).items() if isinstance(v, (int, float))}})
        parents = [p for p in (meta.get("parent"), *(meta.get("teachers") or [])) if p]
        current = Path(parents[0]["path"]) if parents else None
    return chain


def _write_preprocessing(handle: ModelHandle, folder: Path) -> dict[str, Any]:
    preprocessing = dict(handle.preprocessing)
    if handle.task == "text-classification":
        tokenizer = handle.tokenizer
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer.save_pretrained(scratch)
            source = Path(scratch) / TOKENIZER_FILE
            if not source.is_file():
                raise EdgekitError(f"{handle.arch}'s tokenizer cannot be saved as {TOKENIZER_FILE}; edgekit needs a fast tokenizer")
            shutil.copy(source, folder / TOKENIZER_FILE)
        preprocessing["pad_id"] = int(tokenizer.pad_token_id or 0)
        preprocessing["pad_token"] = tokenizer.pad_token or "[PAD]"
    return preprocessing


def _batches(encoder: Encoder, split: Split | None, limit: int, batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    if split is None or len(split) == 0:
        return []
    items = list(split.items[:limit])
    return [encoder(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


@torch.no_grad()
def _torch_logits(handle: ModelHandle, batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    handle.module.cpu().eval()
    return [handle.logits({k: torch.from_numpy(v) for k, v in b.items()}).float().numpy() for b in batches]


def _check_parity(name: str, reference: list[np.ndarray], exported: list[np.ndarray], int8: bool,
                  parity: dict[str, Any]) -> dict[str, Any]:
    ref, out = np.concatenate(reference), np.concatenate(exported)
    result = {
        "model": name, "examples": int(len(ref)),
        "max_abs_diff": float(np.max(np.abs(ref - out))),
        "label_agreement": agreement(ref, out),
        "snr_db": snr_db(ref, out),
    }
    if int8:
        result["thresholds"] = {"min_agreement": parity["min_agreement"], "min_snr_db": parity["min_snr_db"]}
        result["passed"] = result["label_agreement"] >= parity["min_agreement"] and result["snr_db"] >= parity["min_snr_db"]
    else:
        tolerance = parity["fp32_atol"] + parity["fp32_rtol"] * float(np.max(np.abs(ref)))
        result["thresholds"] = {"max_abs_diff": tolerance}
        result["passed"] = result["max_abs_diff"] <= tolerance
    return result


def build_bundle(
    handle: ModelHandle,
    folder: Path,
    preset: dict[str, Any],
    *,
    calibration: Split | None,
    parity_split: Split | None,
    source_stage: Path | None,
    allow_drop: bool = False,
) -> dict[str, Any]:
    """Export ``handle`` into ``folder`` (which the caller makes atomic) and return the manifest."""
    folder = Path(folder)
    int8 = bool(preset["int8"])
    preprocessing = _write_preprocessing(handle, folder)
    with tempfile.TemporaryDirectory(prefix="edgekit-export-") as scratch:
        scratch = Path(scratch)
        fp32_path = scratch / "model.fp32.onnx"
        inputs = export_fp32(handle, fp32_path, int(preset["opset"]))
        manifest: dict[str, Any] = {
            "schema_version": 1, "format": "onnx", "opset": int(preset["opset"]), "preset": preset["name"],
            "task": handle.task, "arch": handle.arch, "label_names": handle.label_names,
            "preprocessing": preprocessing, "inputs": inputs,
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", len(handle.label_names)]}],
        }
        encoder = Encoder(folder, manifest)
        parity_batches = _batches(encoder, parity_split, 256)
        if not parity_batches:
            parity_batches = [{k: v.numpy() for k, v in handle.example_inputs(batch=4).items()}]
        reference = _torch_logits(handle, parity_batches)
        parity = {"fp32": _check_parity("fp32", reference, run_isolated(fp32_path, parity_batches, scratch), False,
                                        preset["parity"])}
        if not parity["fp32"]["passed"] and not allow_drop:
            raise EdgekitError(
                f"fp32 ONNX differs from the PyTorch model by {parity['fp32']['max_abs_diff']:.3g} "
                f"(allowed {parity['fp32']['thresholds']['max_abs_diff']:.3g}); no bundle written (--allow-drop keeps it)"
            )
        quantization = None
        final = fp32_path
        if int8:
            int8_path = scratch / "model.int8.onnx"
            reduce_range = resolve_reduce_range(preset["quantization"]["reduce_range"])
            calib = _batches(encoder, calibration, int(preset.get("calib_samples", 256)))
            quantization = quantize(fp32_path, int8_path, preset["quantization"], reduce_range, calib)
            parity["int8"] = _check_parity("int8", reference, run_isolated(int8_path, parity_batches, scratch), True,
                                           preset["parity"])
            if not parity["int8"]["passed"] and not allow_drop:
                p = parity["int8"]
                raise EdgekitError(
                    f"int8 ONNX fails parity: label agreement {p['label_agreement']:.1%} "
                    f"(needs {p['thresholds']['min_agreement']:.0%}), SNR {p['snr_db']:.1f} dB "
                    f"(needs {p['thresholds']['min_snr_db']} dB); no bundle written "
                    "(try another --preset, --fp32, or --allow-drop to keep it)"
                )
            final = int8_path
        shutil.copy(final, folder / MODEL_FILE)
        fp32_bytes = fp32_path.stat().st_size
    import onnxruntime

    manifest.update({
        "quantization": quantization,
        "parameters": handle.parameter_count(),
        "sizes": {"model_bytes": (folder / MODEL_FILE).stat().st_size, "fp32_model_bytes": fp32_bytes},
        "sha256": sha256_file(folder / MODEL_FILE),
        "parity": parity,
        "lineage": lineage(source_stage),
        "versions": {"edgekit": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "python": platform.python_version()},
    })
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
