"""The export stage: a model stage folder in, a parity-checked bundle out.

Bundle layout: the model file(s) (model.onnx / model.pt; encoder.* and decoder.* for T5),
manifest.json (format, precision, opset, graphs with inputs, labels, preprocessing, quantization,
graph optimization, sizes, sha256, lineage, parity, versions), tokenizer.json for text, meta.json.

Every candidate file is run by the runtime that will ship it, in a child process, on real task
inputs: fp32 must match PyTorch within a tolerance, int8/fp16 are judged by label agreement and SNR.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit import __version__, registry
from edgekit.artifacts import sha256_file
from edgekit.data.splits import Split
from edgekit.errors import EdgekitError
from edgekit.export.graphs import FullDecoder, Graph, cache_refusal, export_torchscript, graphs_for, quiet
from edgekit.export.onnx import fuse_transformer, is_convolutional, quantize, to_fp16
from edgekit.export.presets import Preset, embedding_precision, resolve_engine, resolve_reduce_range
from edgekit.export.sizes import breakdown as size_breakdown
from edgekit.log import info as log
from edgekit.metrics import agreement, snr_db
from edgekit.models.handle import ModelHandle, keep_pruned_vocabulary
from edgekit.records import Manifest, ModelFile, read_meta
from edgekit.runtime.bundle import TOKENIZER_FILE, Encoder
from edgekit.runtime.validate import run_isolated

TIMING_RUNS = 30


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


def _batches(encoder: Encoder, split: Split | None, limit: int, batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    if split is None or len(split) == 0:
        return []
    items = list(split.items[:limit])
    return [encoder(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def _parity_batches(
    handle: ModelHandle, graphs: list[Graph], encoder: Encoder, split: Split | None
) -> list[dict[str, np.ndarray]]:
    """Real task inputs (up to 256 examples), or the export's example inputs without data."""
    generates = handle.spec.generates
    batches = _batches(encoder, split, handle.spec.parity_examples)
    if not batches:
        return (
            [{n: t.numpy() for n, t in zip(graphs[0].inputs, graphs[0].example)}]
            if not generates
            else [
                {
                    "input_ids": graphs[0].example[0].numpy(),
                    "attention_mask": graphs[0].example[1].numpy(),
                    "decoder_input_ids": np.random.default_rng(0).integers(
                        5, int(handle.module.config.vocab_size), (len(graphs[0].example[0]), 5)
                    ),
                }
            ]
        )
    if generates:  # teacher forcing on the reference targets
        targets = list(split.labels[: handle.spec.parity_examples])
        for start, batch in zip(range(0, len(targets), 16), batches):
            labels = handle.tokenizer(
                text_target=[str(t) for t in targets[start : start + 16]],
                padding=True,
                truncation=True,
                max_length=int(handle.preprocessing.get("max_target_length", 128)),
                return_tensors="pt",
            )["input_ids"]
            batch["decoder_input_ids"] = handle.module.prepare_decoder_input_ids_from_labels(labels=labels).numpy()
    return batches


@torch.no_grad()
def _torch_logits(handle: ModelHandle, graphs: list[Graph], batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The source model's outputs through the same wrappers that were exported."""
    handle.module.cpu().eval()
    out = []
    for b in batches:
        t = {k: torch.from_numpy(v) for k, v in b.items()}
        if handle.spec.generates:  # teacher-forced logits of every target position, without a cache
            hidden = graphs[0].module(t["input_ids"], t["attention_mask"])
            out.append(FullDecoder(handle.module)(t["decoder_input_ids"], hidden, t["attention_mask"]).float().numpy())
        else:
            out.append(graphs[0].module(*[t[n] for n in graphs[0].inputs]).float().numpy())
    return out


GENERATION_PARITY_EXAMPLES = 32
GENERATION_PARITY_TOKENS = 32


@torch.no_grad()
def _generation_parity(handle: ModelHandle, folder: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Greedy generation of the bundle in ``folder`` against the PyTorch model's ``generate`` on the parity
    sources: identical sequences, token agreement (positions of PyTorch's output, up to its end), and
    BLEU of the bundle's texts with PyTorch's as the references (100: the same)."""
    from edgekit.metrics import generation_metrics
    from edgekit.runtime import Bundle

    bundle = Bundle(folder, verify=False)  # a scratch candidate: checksums are written later
    handle.module.cpu().eval()  # as _torch_logits: the reference runs in eval mode, whatever ran before
    limit = min(int(handle.preprocessing.get("max_target_length", 128)), GENERATION_PARITY_TOKENS)
    eos = handle.module.config.eos_token_id
    same = total = agreeing = examples = 0
    ours, theirs = [], []
    for batch in batches:
        if examples >= GENERATION_PARITY_EXAMPLES:
            break
        feeds = {k: batch[k] for k in ("input_ids", "attention_mask")}
        reference = handle.module.generate(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            max_new_tokens=limit,
            num_beams=1,
            do_sample=False,
        ).numpy()[:, 1:]
        exported = bundle.greedy(feeds, limit)[:, 1:]
        for ref, out in zip(reference, exported):
            end = next((i + 1 for i, t in enumerate(ref) if t == eos), len(ref))  # through EOS
            ref, out = ref[:end], out[:end]
            padded = np.pad(out, (0, end - len(out)), constant_values=-1)
            agreeing += int((padded == ref).sum())
            total += end
            same += bool(len(out) == end and (out == ref).all())
            ours.append(handle.tokenizer.decode(out.tolist(), skip_special_tokens=True).strip())
            theirs.append(handle.tokenizer.decode(ref.tolist(), skip_special_tokens=True).strip())
        examples += len(reference)
    return {
        "examples": examples,
        "max_new_tokens": limit,
        "identical_sequences": same,
        "token_agreement": agreeing / total if total else 1.0,
        "bleu_vs_pytorch": generation_metrics(ours, theirs)["bleu"]
        if any(theirs)
        else (100.0 if ours == theirs else 0.0),
        "kv_cache": bundle.cached,
    }


def _check_parity(
    name: str, reference: list[np.ndarray], exported: list[np.ndarray], lossy: bool, parity: dict[str, Any]
) -> dict[str, Any]:
    ref = np.concatenate([r.reshape(-1, r.shape[-1]) for r in reference])
    out = np.concatenate([e.reshape(-1, e.shape[-1]) for e in exported])
    result = {
        "model": name,
        "examples": int(sum(len(r) for r in reference)),
        "max_abs_diff": float(np.max(np.abs(ref - out))),
        "label_agreement": agreement(ref, out),
        "snr_db": snr_db(ref, out),
    }
    if len(ref) != result["examples"]:
        result["positions"] = int(len(ref))  # encoder-decoders: agreement is per target token
    if lossy:
        result["thresholds"] = {"min_agreement": parity["min_agreement"], "min_snr_db": parity["min_snr_db"]}
        result["passed"] = (
            result["label_agreement"] >= parity["min_agreement"] and result["snr_db"] >= parity["min_snr_db"]
        )
    else:
        tolerance = parity["fp32_atol"] + parity["fp32_rtol"] * float(np.max(np.abs(ref)))
        result["thresholds"] = {"max_abs_diff": tolerance}
        result["passed"] = result["max_abs_diff"] <= tolerance
    return result


def _candidate(scratch: Path, name: str, manifest: Manifest) -> Path:
    """A bundle folder in the scratch space the validator can open (manifest without tokenizer)."""
    folder = scratch / name
    folder.mkdir()
    manifest.write(folder)
    return folder


def _files(folder: Path, manifest: Manifest) -> list[Path]:
    return [folder / g.file for g in manifest.graphs]


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
    convolutional = any(is_convolutional(p) for p in _files(fp32_dir, manifest))
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
        fused_dir = _candidate(scratch, "fused-fp32", manifest)
        config = getattr(handle.module, "config", None)
        heads, hidden = (int(getattr(config, k, 0) or 0) for k in ("num_attention_heads", "hidden_size"))
        stats = [fuse_transformer(src, fused_dir / src.name, heads, hidden) for src in _files(fp32_dir, manifest)]
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
        folder = _candidate(scratch, f"{variant}-{preset.precision}", manifest)
        try:
            quantization: dict[str, Any] = {}
            for src in _files(source, manifest):
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


def onnx_candidates(job: _Export, fp32_dir: Path, calibration: Split | None) -> list[Candidate]:
    """The ``onnx`` format's lossy writer: int8 (static calibrated or dynamic) or fp16, plain and fused."""
    spec, preset = job.handle.spec, job.preset
    calib = _batches(job.encoder, calibration, preset.calib_samples) if spec.static_int8 else []
    return _onnx_lossy(job.handle, fp32_dir, job.scratch, preset, job.manifest, calib)


def torchscript_candidates(job: _Export, fp32_dir: Path, calibration: Split | None) -> list[Candidate]:
    """The ``torchscript`` format's lossy writer: torch's dynamic int8."""
    folder = _candidate(job.scratch, "int8", job.manifest)
    return [Candidate("plain", folder, _torch_int8(job.handle, job.preset.quantization, folder))]


def _remove_dead_scratch() -> None:
    """Scratch folders of exports that were killed (kill -9 skips their clean-up): named by pid, removed
    by the next export once that process is gone (under the CLI they live in its command folder, which
    the next command removes: edgekit.artifacts.command_scratch)."""
    from edgekit.artifacts import remove_dead_scratch

    remove_dead_scratch(Path(tempfile.gettempdir()), ("edgekit-export-",))


def host_description(target_machine: str | None = None) -> dict[str, Any]:
    from edgekit.bench.env import here

    where = {"where": "host", "emulated": False, **here()}
    if target_machine and target_machine != where["machine"]:
        where["note"] = (
            f"measured on this {where['machine']} host's kernels, not on the {target_machine} target's; "
            "build the emulated target (edgekit devices emulate rpi4) or pass --host to check there"
        )
    return where


def _lossy_parity(
    precision: str,
    reference: list[np.ndarray],
    final: Path,
    batches: list[dict[str, np.ndarray]],
    scratch: Path,
    preset: Preset,
    targets: Sequence[Any],
) -> dict[str, dict[str, Any]]:
    """The lossy bundle's parity: on this host, and on each target. The gate (``precision``) is the
    worst target's when there are targets, else the host's."""
    from edgekit.targets import target_environment, validate_on

    target_machine = preset.target_machine
    host = _check_parity(precision, reference, run_isolated(final, batches, scratch), True, preset.parity)
    host["measured_on"] = host_description(target_machine)
    if not targets:
        return {precision: host}
    results = {}
    for target in targets:
        log(f"export: parity of {precision} on {target.name}")
        with target.session() as session:
            outputs = validate_on(session, final, batches)
            where = {**target.describe(), **target_environment(session)}
        entry = _check_parity(precision, reference, outputs, True, preset.parity)
        entry["measured_on"] = where
        results[f"{precision}@{where.get('device') or where['machine']}"] = entry
    worst = min(results.values(), key=lambda e: (e["passed"], e["label_agreement"], e["snr_db"]))
    return {precision: dict(worst), **(results if len(results) > 1 else {}), f"{precision}@host": host}


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


def _keep(
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
    size = {c.variant: sum(p.stat().st_size for p in _files(c.folder, manifest)) for c in (plain, fused)}
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


@dataclasses.dataclass
class _Export:
    """What one export works with: the model, its graphs, the preset and the parity inputs."""

    handle: ModelHandle
    preset: Preset
    manifest: Manifest
    graphs: list
    encoder: Encoder
    batches: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]
    scratch: Path
    writer: registry.Entry  # the format entry: writer, lossy candidates, suffix, runtime
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)  # format-specific manifest sections

    @property
    def title(self) -> str:
        return self.writer.can("title")

    @property
    def suffix(self) -> str:
        return self.writer.can("suffix")


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
    batches = _parity_batches(handle, graphs, encoder, parity_split)
    reference = _torch_logits(handle, graphs, batches)
    _remove_dead_scratch()
    with tempfile.TemporaryDirectory(prefix=f"edgekit-export-{os.getpid()}-") as scratch:
        job = _Export(handle, preset, manifest, graphs, encoder, batches, reference, Path(scratch), writer)
        fp32_dir, exporters, parity = _export_fp32(job, allow_drop)
        quantization, optimization, final = None, {"variants": {}, "kept": "plain"}, fp32_dir
        if preset.max_drop is not None:
            from edgekit.export.budget import check_budget

            check_budget(job, parity_split)
        if preset.precision != "fp32":
            final, quantization, optimization = _lossy_candidate(job, fp32_dir, calibration)
            if preset.max_drop is not None:  # the budget is the gate: accuracy on validation data
                from edgekit.export.budget import MAX_EXAMPLES, within_budget

                static = None
                if quantization.get("mode") == "static":  # the budget plans over the same calibration
                    calib = _batches(encoder, calibration, preset.calib_samples)
                    static = {"calibration": calib, "fp32_nodes": quantization.get("fp32_nodes") or []}
                final, budget = within_budget(
                    job,
                    fp32_dir,
                    final,
                    parity_split,
                    _batches(encoder, parity_split, MAX_EXAMPLES),
                    float(preset.max_drop),
                    lambda name: _candidate(job.scratch, name, manifest),
                    targets,
                    static,
                )
                quantization = {**quantization, "budget": budget}
            parity.update(_lossy_parity(preset.precision, reference, final, batches, job.scratch, preset, targets))
            if preset.max_drop is None:
                _gate_lossy(job, parity[preset.precision], allow_drop)
        if spec.generates:  # what a user gets from the bundle: its greedy tokens against transformers' generate
            for name, candidate in {"fp32": fp32_dir, preset.precision: final}.items():
                parity[name]["generation"] = _generation_parity(handle, candidate, batches)
        for path in _files(final, manifest):
            shutil.copy(path, folder / path.name)
        fp32_bytes = sum(p.stat().st_size for p in _files(fp32_dir, manifest))
    return _finish_manifest(
        job, folder, exporters, quantization, optimization if onnx else None, parity, fp32_bytes, source_stage
    )


def _export_fp32(job: _Export, allow_drop: bool) -> tuple[Path, dict[str, str], dict[str, dict[str, Any]]]:
    """The fp32 graphs in a scratch bundle, their exporter, and their parity (a failure stops the export)."""
    fp32_dir = _candidate(job.scratch, "fp32", job.manifest)
    write = job.writer.load()  # the format's fp32 writer: (graph, path, job) -> the exporter used
    exporters = {graph.name: write(graph, fp32_dir / (graph.name + job.suffix), job) for graph in job.graphs}
    outputs = run_isolated(fp32_dir, job.batches, job.scratch)
    parity = {"fp32": _check_parity("fp32", job.reference, outputs, False, job.preset.parity)}
    parity["fp32"]["measured_on"] = host_description()
    p = parity["fp32"]
    if not p["passed"] and not allow_drop:
        raise EdgekitError(
            f"fp32 {job.title} differs from the PyTorch model by {p['max_abs_diff']:.3g} "
            f"(allowed {p['thresholds']['max_abs_diff']:.3g}); no bundle written (--allow-drop keeps it)"
        )
    return fp32_dir, exporters, parity


def _lossy_candidate(job: _Export, fp32_dir: Path, calibration: Split | None):
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
            check = _check_parity(c.variant, job.reference, outputs, True, preset.parity)
            entry["label_agreement"], entry["snr_db"] = check["label_agreement"], check["snr_db"]
        optimization["variants"][c.variant] = entry
    best = _keep(candidates, optimization["variants"], manifest, timed)
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


def _gate_lossy(job: _Export, p: dict[str, Any], allow_drop: bool) -> None:
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
    job: _Export, folder, exporters, quantization, optimization, parity, fp32_bytes, source_stage
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
