"""An export's parity: the inputs it is judged on (real task examples), the PyTorch reference through
the exported wrappers, the comparison with the exported files (fp32: a tolerance; int8/fp16: label
agreement and SNR, on the host or on each target), and greedy generation against ``generate``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.data.splits import Split
from edgekit.export.graphs import Graph
from edgekit.export.presets import Preset
from edgekit.export.seq2seq_graphs import FullDecoder
from edgekit.log import info as log
from edgekit.metrics import agreement, snr_db
from edgekit.models.handle import ModelHandle
from edgekit.runtime.bundle import Encoder
from edgekit.runtime.validate import run_isolated


def batches_of(encoder: Encoder, split: Split | None, limit: int, batch_size: int = 16) -> list[dict[str, np.ndarray]]:
    if split is None or len(split) == 0:
        return []
    items = list(split.items[:limit])
    return [encoder(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def parity_batches(
    handle: ModelHandle, graphs: list[Graph], encoder: Encoder, split: Split | None
) -> list[dict[str, np.ndarray]]:
    """Real task inputs (up to 256 examples), or the export's example inputs without data."""
    generates = handle.spec.generates
    batches = batches_of(encoder, split, handle.spec.parity_examples)
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
def torch_outputs(handle: ModelHandle, graphs: list[Graph], batches: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
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
def generation_parity(handle: ModelHandle, folder: Path, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Greedy generation of the bundle in ``folder`` against the PyTorch model's ``generate`` on the parity
    sources: identical sequences, token agreement (positions of PyTorch's output, up to its end), and
    BLEU of the bundle's texts with PyTorch's as the references (100: the same)."""
    from edgekit.metrics import generation_metrics
    from edgekit.runtime import Bundle

    bundle = Bundle(folder, verify=False)  # a scratch candidate: checksums are written later
    handle.module.cpu().eval()  # as torch_outputs: the reference runs in eval mode, whatever ran before
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


def check_parity(
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


def host_description(target_machine: str | None = None) -> dict[str, Any]:
    from edgekit.bench.env import here

    where = {"where": "host", "emulated": False, **here()}
    if target_machine and target_machine != where["machine"]:
        where["note"] = (
            f"measured on this {where['machine']} host's kernels, not on the {target_machine} target's; "
            "build the emulated target (edgekit devices emulate rpi4) or pass --host to check there"
        )
    return where


def lossy_parity(
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
    host = check_parity(precision, reference, run_isolated(final, batches, scratch), True, preset.parity)
    host["measured_on"] = host_description(target_machine)
    if not targets:
        return {precision: host}
    results = {}
    for target in targets:
        log(f"export: parity of {precision} on {target.name}")
        with target.session() as session:
            outputs = validate_on(session, final, batches)
            where = {**target.describe(), **target_environment(session)}
        entry = check_parity(precision, reference, outputs, True, preset.parity)
        entry["measured_on"] = where
        results[f"{precision}@{where.get('device') or where['machine']}"] = entry
    worst = min(results.values(), key=lambda e: (e["passed"], e["label_agreement"], e["snr_db"]))
    return {precision: dict(worst), **(results if len(results) > 1 else {}), f"{precision}@host": host}
