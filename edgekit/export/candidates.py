"""The lossy candidates of an export (int8/fp16; plain and, for transformers, with onnxruntime's
fusions) and the rule, or the timing, that decides which one ships."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit import registry
from edgekit.data.splits import Split
from edgekit.errors import EdgekitError
from edgekit.export.graphs import export_torchscript, graphs_for, quiet
from edgekit.export.job import ExportJob, candidate_folder, graph_files
from edgekit.export.onnx import fuse_transformer, is_convolutional, quantize, to_fp16
from edgekit.export.parity import batches_of, check_parity
from edgekit.export.presets import Preset, embedding_precision, resolve_engine, resolve_reduce_range
from edgekit.models.handle import ModelHandle
from edgekit.records import Manifest
from edgekit.runtime.validate import run_isolated


def _torch_int8(handle: ModelHandle, quant: dict[str, Any], folder: Path) -> dict[str, Any]:
    """torch dynamic int8 of every Linear layer and weight-only 8-bit embeddings, traced to TorchScript."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    engine = resolve_engine(quant["engine"])
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        qconfig = per_channel_dynamic_qconfig if quant["per_channel"] else default_dynamic_qconfig
        with quiet():
            module = quantize_dynamic(
                copy.deepcopy(handle.module).eval(),
                {torch.nn.Linear: qconfig, torch.nn.Embedding: float_qparams_weight_only_qconfig},
                dtype=torch.qint8,
            )
        quantized = [type(m).__name__ for m in module.modules() if "quantized" in type(m).__module__]
        qhandle = dataclasses.replace(handle, module=module)
        for graph in graphs_for(qhandle):
            export_torchscript(graph, folder / f"{graph.name}.pt", handle.arch)
    finally:
        torch.backends.quantized.engine = previous
    return {
        "mode": "dynamic",
        "engine": engine,
        "per_channel": bool(quant["per_channel"]),
        "weight_type": "int8",
        "activation_type": "dynamic uint8",
        "quantized_linear_layers": quantized.count("Linear"),
        "quantized_embeddings": quantized.count("Embedding"),
        "note": "torch dynamic quantization covers Linear layers and embeddings; convolutions stay fp32",
    }


@dataclasses.dataclass
class Candidate:
    """A lossy graph that may ship: its variant (plain, fused), its folder, how it was quantized, and notes."""

    variant: str
    folder: Path
    quantization: dict[str, Any]
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)


def _onnx_lossy(
    handle: ModelHandle,
    fp32_dir: Path,
    scratch: Path,
    preset: Preset,
    manifest: Manifest,
    calibration: list[dict[str, np.ndarray]],
) -> list[Candidate]:
    """int8/fp16 candidates: the graph as exported, and (transformers) with onnxruntime's fusions.
    Returns one :class:`Candidate` per graph that quantized."""
    convolutional = any(is_convolutional(p) for p in graph_files(fp32_dir, manifest))
    sources = {"plain": fp32_dir}
    notes: dict[str, dict[str, Any]] = {"plain": {}}
    # int4 quantizes MatMuls only: a fused Attention node would keep its projections float
    wants_fusion = (
        preset.optimize in ("auto", "fused", "timed")
        and handle.spec.transformer_fusions
        and not convolutional
        and preset.precision != "int4"
        and preset.max_drop is None  # the budget plans the plain graph's weights
    )
    if preset.optimize == "fused" and preset.precision == "int4":
        raise EdgekitError("int4 bundles are not fused (fused attention keeps its weights float); use optimize: auto")
    if wants_fusion:
        fused_dir = candidate_folder(scratch, "fused-fp32", manifest)
        config = getattr(handle.module, "config", None)
        heads, hidden = (int(getattr(config, k, 0) or 0) for k in ("num_attention_heads", "hidden_size"))
        stats = [fuse_transformer(src, fused_dir / src.name, heads, hidden) for src in graph_files(fp32_dir, manifest)]
        if all(s is not None for s in stats):
            sources["fused"] = fused_dir
            notes["fused"] = {"fused_ops": {k: v for s in stats for k, v in s.items()}}
        elif preset.optimize == "fused":
            raise EdgekitError(
                f"onnxruntime's transformer optimizer found nothing to fuse in {handle.arch}; "
                "use a preset with optimize: auto or none"
            )
        if preset.optimize == "fused":
            sources.pop("plain")
    candidates = []
    reduce_range = resolve_reduce_range(preset.quantization["reduce_range"])
    for variant, source in sources.items():
        folder = candidate_folder(scratch, f"{variant}-{preset.precision}", manifest)
        try:
            quantization: dict[str, Any] = {}
            for src in graph_files(source, manifest):
                if preset.precision == "fp16":
                    quantization = to_fp16(src, folder / src.name)
                else:
                    quantization = quantize(
                        src,
                        folder / src.name,
                        preset.quantization,
                        reduce_range,
                        calibration,
                        preset.precision,
                        embedding_precision(preset),
                    )
        except EdgekitError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fused graph the quantizer cannot read: keep the plain one
            if variant == "plain" or len(sources) == 1:
                raise EdgekitError(
                    f"cannot convert {handle.arch} to {preset.precision}: "
                    f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}"
                ) from None
            notes["plain"]["fused_failed"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            continue
        candidates.append(Candidate(variant, folder, quantization, notes[variant]))
    return candidates


def onnx_candidates(job: ExportJob, fp32_dir: Path, calibration: Split | None) -> list[Candidate]:
    """The ``onnx`` format's lossy writer: int8 (static calibrated or dynamic) or fp16, plain and fused."""
    spec, preset = job.handle.spec, job.preset
    calib = batches_of(job.encoder, calibration, preset.calib_samples) if spec.static_int8 else []
    return _onnx_lossy(job.handle, fp32_dir, job.scratch, preset, job.manifest, calib)


def torchscript_candidates(job: ExportJob, fp32_dir: Path, calibration: Split | None) -> list[Candidate]:
    """The ``torchscript`` format's lossy writer: torch's dynamic int8."""
    folder = candidate_folder(job.scratch, "int8", job.manifest)
    return [Candidate("plain", folder, _torch_int8(job.handle, job.preset.quantization, folder))]


TIMING_RUNS = 30


FUSED_SNR_SLACK_DB = 1.0  # the fused graph may be this much noisier (dB) than the plain one, never less accurate


FUSED_MARGIN = 0.95  # a fused graph is kept only when it is at least 5% faster than the plain one


TIMED = ("p50_ms", "p50_ms_max_length")  # batch 1: a task example, and (text) the same padded to max_length


def _timing_inputs(
    batch: dict[str, np.ndarray], preprocessing: dict[str, Any]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The inputs candidates are timed on: one task example and, for text, that example padded to
    max_length (what a fixed-shape deployment feeds)."""
    first = {k: v[:1] for k, v in batch.items()}
    inputs = {"p50_ms": [first]}
    length = int(preprocessing.get("max_length") or 0)
    if "input_ids" in first and first["input_ids"].ndim == 2 and first["input_ids"].shape[1] < length:
        pad = length - first["input_ids"].shape[1]
        values = {"input_ids": int(preprocessing.get("pad_id", 0))}
        inputs["p50_ms_max_length"] = [
            {k: np.pad(v, ((0, 0), (0, pad)), constant_values=values.get(k, 0)) for k, v in first.items()}
        ]
    return inputs


def keep(
    candidates: list[Candidate], variants: dict[str, dict[str, Any]], manifest: Manifest, timed: bool = False
) -> Candidate:
    """Which graph ships. By default (``optimize: auto``) a rule on deterministic measurements, so the
    same model and settings always give the same bundle: the fused graph when onnxruntime's fusions
    applied, it agrees with PyTorch on at least as many parity labels as the plain graph, its SNR is
    at most 1 dB lower, and it is no more than 5% larger. ``optimize: timed`` decides by timing on this CPU instead: fused
    only when clearly faster (>= 5%) and no larger, or as fast (within 5%) and smaller; timings move
    from run to run, so two timed exports of one model can differ."""
    plain = next((c for c in candidates if c.variant == "plain"), None)
    fused = next((c for c in candidates if c.variant == "fused"), None)
    if plain is None or fused is None:
        return candidates[0]
    size = {c.variant: sum(p.stat().st_size for p in graph_files(c.folder, manifest)) for c in (plain, fused)}
    for name in size:
        variants[name]["model_bytes"] = size[name]
    if not timed:
        f, p = variants["fused"], variants["plain"]
        close = f["label_agreement"] >= p["label_agreement"] and f["snr_db"] >= p["snr_db"] - FUSED_SNR_SLACK_DB
        return fused if close and size["fused"] <= 1.05 * size["plain"] else plain
    # the slower of the timed inputs decides: a fused graph faster on short inputs but slower at
    # max_length (MiniLM int8 at 128 tokens) is not kept
    ratio = max(variants["fused"][key] / variants["plain"][key] for key in TIMED if key in variants["plain"])
    faster = ratio <= FUSED_MARGIN and size["fused"] <= 1.05 * size["plain"]
    smaller = ratio <= 1 / FUSED_MARGIN and size["fused"] < size["plain"]  # as fast within noise, smaller file
    return fused if faster or smaller else plain


def lossy_candidate(job: ExportJob, fp32_dir: Path, calibration: Split | None):
    """The int8/fp16 candidates (plain, and fused where onnxruntime's fusions apply), compared by the
    preset's rule or by timing; returns (kept folder, quantization record, optimization record)."""
    preset, manifest, spec = job.preset, job.manifest, job.handle.spec
    candidates = registry.resolve(job.writer.can("lossy"))(job, fp32_dir, calibration)
    timed = preset.optimize == "timed"
    timing = _timing_inputs(job.batches[0], manifest.preprocessing) if not spec.generates else {}
    optimization: dict[str, Any] = {"variants": {}, "kept": "plain"}
    for c in candidates:
        entry = dict(c.notes)
        if len(candidates) > 1 and timed:  # measured on this CPU, batch 1, by the shipping runtime
            for key, feed in timing.items():
                entry[key] = run_isolated(c.folder, feed, job.scratch, time_runs=TIMING_RUNS)[1]
        elif len(candidates) > 1:  # deterministic: how close each graph's outputs are to PyTorch's
            outputs = run_isolated(c.folder, job.batches, job.scratch)
            check = check_parity(c.variant, job.reference, outputs, True, preset.parity)
            entry["label_agreement"], entry["snr_db"] = check["label_agreement"], check["snr_db"]
        optimization["variants"][c.variant] = entry
    best = keep(candidates, optimization["variants"], manifest, timed)
    optimization["kept"] = best.variant
    if len(candidates) > 1:
        optimization["decided_by"] = _decided_by(timed, len(timing))
    return best.folder, best.quantization, optimization


def _decided_by(timed: bool, timed_inputs: int) -> str:
    if timed:
        return (
            f"timing (optimize: timed): p50 of {TIMING_RUNS} runs at batch 1 on this CPU (a task example"
            f"{', and padded to max_length' if timed_inputs > 1 else ''}); fused kept when "
            f">= {1 - FUSED_MARGIN:.0%} faster on each and no larger, or as fast and smaller"
        )
    return (
        "rule (optimize: auto): the fused graph when onnxruntime's fusions applied, it agrees with PyTorch "
        "on at least as many parity labels as the plain one, its SNR is at most 1 dB lower and it is at "
        "most 5% larger; the same model and settings always give the same bundle (optimize: none or timed "
        "to change it)"
    )
