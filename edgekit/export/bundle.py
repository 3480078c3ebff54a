"""The export stage: a model stage folder in, a parity-checked bundle out.

Bundle layout: the model file(s) (model.onnx / model.pt; encoder.* and decoder.* for T5),
manifest.json (format, precision, opset, graphs with inputs, labels, preprocessing, quantization,
graph optimization, sizes, sha256, lineage, parity, versions), tokenizer.json for text, meta.json.

Every candidate file is run by the runtime that will ship it, in a child process, on real task
inputs: fp32 must match PyTorch within a tolerance, int8/fp16 are judged by label agreement and SNR.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edgekit import __version__, registry
from edgekit.artifacts import sha256_file
from edgekit.data.splits import Split
from edgekit.errors import EdgekitError
from edgekit.export.candidates import lossy_candidate
from edgekit.export.graphs import graphs_for
from edgekit.export.job import ExportJob, candidate_folder, graph_files
from edgekit.export.parity import (
    batches_of,
    check_parity,
    generation_parity,
    host_description,
    lossy_parity,
    parity_batches,
    torch_outputs,
)
from edgekit.export.presets import Preset
from edgekit.export.seq2seq_graphs import cache_refusal
from edgekit.export.sizes import breakdown as size_breakdown
from edgekit.models.handle import ModelHandle, keep_pruned_vocabulary
from edgekit.records import Manifest, ModelFile, read_meta
from edgekit.runtime.bundle import TOKENIZER_FILE, Encoder
from edgekit.runtime.validate import run_isolated


def lineage(stage_dir: Path | None) -> list[dict[str, Any]]:
    """The chain of stages that produced ``stage_dir``, newest first, back to the teacher."""
    chain, seen = [], set()
    current = Path(stage_dir) if stage_dir else None
    while current is not None and (current / "meta.json").is_file() and str(current) not in seen:
        seen.add(str(current))
        meta = read_meta(current)
        chain.append(
            {
                "stage": meta.stage,
                "path": str(current.resolve()),
                "fingerprint": meta.fingerprint,
                "model": meta.config.get("model"),
                "metrics": {k: v for k, v in meta.metrics.items() if isinstance(v, (int, float))},
            }
        )
        current = Path(meta.parent.path) if meta.parent else None
    return chain


def _write_preprocessing(handle: ModelHandle, folder: Path) -> dict[str, Any]:
    preprocessing = dict(handle.preprocessing)
    if handle.spec.modality == "text":
        tokenizer = handle.tokenizer
        with tempfile.TemporaryDirectory() as scratch:
            tokenizer.save_pretrained(scratch)
            keep_pruned_vocabulary(tokenizer, Path(scratch))
            source = Path(scratch) / TOKENIZER_FILE
            if not source.is_file():
                raise EdgekitError(
                    f"{handle.arch}'s tokenizer cannot be saved as {TOKENIZER_FILE}; edgekit needs a fast tokenizer"
                )
            shutil.copy(source, folder / TOKENIZER_FILE)
        preprocessing["pad_id"] = int(tokenizer.pad_token_id or 0)
        preprocessing["pad_token"] = tokenizer.pad_token or "[PAD]"
    if handle.spec.generates:
        config = handle.module.config
        preprocessing["decoder_start_id"] = int(
            config.decoder_start_token_id if config.decoder_start_token_id is not None else config.pad_token_id
        )
        preprocessing["eos_id"] = None if config.eos_token_id is None else int(config.eos_token_id)
    return preprocessing


def _cache_decision(handle: ModelHandle, preset: Preset, writer) -> dict[str, Any]:
    """Whether an encoder-decoder bundle decodes with a KV cache, and why not when it does not."""
    if not preset.kv_cache:
        reason = "turned off (--no-kv-cache, or kv_cache: false in the preset)"
    elif not writer.can("kv_cache", False):
        reason = f"{writer.can('title')} bundles have no cached decoder step (--format onnx has one)"
    else:
        reason = cache_refusal(handle.module)
    return {"used": reason is None, "reason": reason}


def _remove_dead_scratch() -> None:
    """Scratch folders of exports that were killed (kill -9 skips their clean-up): named by pid, removed
    by the next export once that process is gone (under the CLI they live in its command folder, which
    the next command removes: edgekit.artifacts.command_scratch)."""
    from edgekit.artifacts import remove_dead_scratch

    remove_dead_scratch(Path(tempfile.gettempdir()), ("edgekit-export-",))


def build_bundle(
    handle: ModelHandle,
    folder: Path,
    preset: Preset,
    *,
    calibration: Split | None,
    parity_split: Split | None,
    source_stage: Path | None,
    allow_drop: bool = False,
    targets: Sequence[Any] = (),
) -> Manifest:
    """Export ``handle`` into ``folder`` (which the caller makes atomic) and return the manifest.

    fp32 graphs (parity-gated) -> for int8/fp16 the lossy candidates (plain and fused), one kept ->
    its parity, on the targets' kernels when there are targets -> files and manifest in ``folder``.

    ``targets`` (emulated or SSH, see :mod:`edgekit.targets`) are where a lossy bundle's parity is
    judged: on the target's own int8 kernels. Without them it is judged on this host, and labelled so."""
    folder = Path(folder)
    spec, writer = handle.spec, registry.get("format", preset.format, option="--format")
    if not spec.static_int8 and preset.precision == "int8" and preset.quantization["mode"] == "static":
        raise EdgekitError("static int8 is for classifiers; export encoder-decoders with dynamic int8 (drop --static)")
    preprocessing = _write_preprocessing(handle, folder)
    if spec.generates:
        preprocessing["kv_cache"] = _cache_decision(handle, preset, writer)
    graphs = graphs_for(handle, kv_cache=bool((preprocessing.get("kv_cache") or {}).get("used")))
    suffix, onnx = writer.can("suffix"), writer.can("opset", False)
    manifest = Manifest(
        task=handle.task,
        label_names=handle.label_names,
        preprocessing=preprocessing,
        graphs=[ModelFile(**g.describe(g.name + suffix)) for g in graphs],
        format=preset.format,
        precision=preset.precision,
        preset=preset.name,
        opset=int(preset.opset) if onnx else None,
        arch=handle.arch,
    )
    encoder = Encoder(folder, manifest)
    batches = parity_batches(handle, graphs, encoder, parity_split)
    reference = torch_outputs(handle, graphs, batches)
    _remove_dead_scratch()
    with tempfile.TemporaryDirectory(prefix=f"edgekit-export-{os.getpid()}-") as scratch:
        job = ExportJob(handle, preset, manifest, graphs, encoder, batches, reference, Path(scratch), writer)
        fp32_dir, exporters, parity = _export_fp32(job, allow_drop)
        quantization, optimization, final = None, {"variants": {}, "kept": "plain"}, fp32_dir
        if preset.max_drop is not None:
            from edgekit.export.budget import check_budget

            check_budget(job, parity_split)
        if preset.precision != "fp32":
            final, quantization, optimization = lossy_candidate(job, fp32_dir, calibration)
            if preset.max_drop is not None:  # the budget is the gate: accuracy on validation data
                from edgekit.export.budget import MAX_EXAMPLES, within_budget

                static = None
                if quantization.get("mode") == "static":  # the budget plans over the same calibration
                    calib = batches_of(encoder, calibration, preset.calib_samples)
                    static = {"calibration": calib, "fp32_nodes": quantization.get("fp32_nodes") or []}
                final, budget = within_budget(
                    job,
                    fp32_dir,
                    final,
                    parity_split,
                    batches_of(encoder, parity_split, MAX_EXAMPLES),
                    float(preset.max_drop),
                    lambda name: candidate_folder(job.scratch, name, manifest),
                    targets,
                    static,
                )
                quantization = {**quantization, "budget": budget}
            parity.update(lossy_parity(preset.precision, reference, final, batches, job.scratch, preset, targets))
            if preset.max_drop is None:
                _gate_lossy(job, parity[preset.precision], allow_drop)
        if spec.generates:  # what a user gets from the bundle: its greedy tokens against transformers' generate
            for name, candidate in {"fp32": fp32_dir, preset.precision: final}.items():
                parity[name]["generation"] = generation_parity(handle, candidate, batches)
        for path in graph_files(final, manifest):
            shutil.copy(path, folder / path.name)
        fp32_bytes = sum(p.stat().st_size for p in graph_files(fp32_dir, manifest))
    return _finish_manifest(
        job, folder, exporters, quantization, optimization if onnx else None, parity, fp32_bytes, source_stage
    )


def _export_fp32(job: ExportJob, allow_drop: bool) -> tuple[Path, dict[str, str], dict[str, dict[str, Any]]]:
    """The fp32 graphs in a scratch bundle, their exporter, and their parity (a failure stops the export)."""
    fp32_dir = candidate_folder(job.scratch, "fp32", job.manifest)
    write = job.writer.load()  # the format's fp32 writer: (graph, path, job) -> the exporter used
    exporters = {graph.name: write(graph, fp32_dir / (graph.name + job.suffix), job) for graph in job.graphs}
    outputs = run_isolated(fp32_dir, job.batches, job.scratch)
    parity = {"fp32": check_parity("fp32", job.reference, outputs, False, job.preset.parity)}
    parity["fp32"]["measured_on"] = host_description()
    p = parity["fp32"]
    if not p["passed"] and not allow_drop:
        raise EdgekitError(
            f"fp32 {job.title} differs from the PyTorch model by {p['max_abs_diff']:.3g} "
            f"(allowed {p['thresholds']['max_abs_diff']:.3g}); no bundle written (--allow-drop keeps it)"
        )
    return fp32_dir, exporters, parity


def _gate_lossy(job: ExportJob, p: dict[str, Any], allow_drop: bool) -> None:
    """A lossy bundle that fails its parity gate is not written (unless --allow-drop)."""
    if p["passed"] or allow_drop:
        return
    where = p["measured_on"]
    raise EdgekitError(
        f"{job.preset.precision} {job.title} fails parity on {where.get('device') or where['machine']}"
        f"{' (emulated)' if where.get('emulated') else ''}: label agreement {p['label_agreement']:.1%} "
        f"(needs {p['thresholds']['min_agreement']:.0%}), SNR {p['snr_db']:.1f} dB "
        f"(needs {p['thresholds']['min_snr_db']} dB); no bundle written "
        "(try another --preset, --fp32, or --allow-drop to keep it)"
    )


def _finish_manifest(
    job: ExportJob, folder, exporters, quantization, optimization, parity, fp32_bytes, source_stage
) -> Manifest:
    """Checksums, sizes, parity, lineage and versions into the manifest, written into ``folder``."""
    import onnxruntime

    manifest = job.manifest
    for graph in manifest.graphs:
        graph.sha256 = sha256_file(folder / graph.file)
        graph.exporter = exporters[graph.name]
    manifest.quantization = quantization
    manifest.graph_optimization = optimization
    manifest.parameters = job.handle.parameter_count()
    manifest.sizes = {
        "model_bytes": manifest.model_bytes(folder),
        "fp32_model_bytes": fp32_bytes,
        # by component and by file (manifest.json and meta.json, a few kB, are written after)
        "breakdown": size_breakdown(folder, [g.file for g in manifest.graphs], bool(job.writer.can("opset", False))),
    }
    manifest.sha256 = manifest.graphs[0].sha256 if len(manifest.graphs) == 1 else None
    manifest.parity = parity
    manifest.lineage = lineage(source_stage)
    manifest.versions = {
        "edgekit": __version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if job.writer.can("runtime_version"):  # the runtime that runs the file, when it is not onnxruntime
        manifest.versions[job.writer.can("runtime")] = registry.resolve(job.writer.can("runtime_version"))()
    manifest.details.update(job.notes)
    return manifest.write(folder)
