"""Quantization within an accuracy budget (``edgekit export --max-drop POINTS``).

The bundle is quantized as its preset says; its accuracy on the validation split is compared with the
fp32 graph's. When the drop (percentage points) is over the budget, every quantized weight (a MatMul
or Gemm weight matrix, an embedding table) is ranked by sensitivity: the SNR of the model's logits, on
the first ``PROBE_EXAMPLES`` parity inputs, when only that weight is quantized (an int4 weight is
probed at int4 and at int8). The most sensitive weights are then returned to higher precision one step
at a time (int4 -> int8 -> fp32; int8 -> fp32), the noisiest (weight, precision) first: a weight that
int8 does not save goes on to fp32 before a robust weight leaves int4. The smallest number of such
moves that meets the budget is found by doubling then bisection (each trial builds the mixed graph and
scores it on the validation split). A plan may keep at most ``MAX_FLOAT_SHARE`` of the quantized
weights' fp32 bytes in fp32: beyond that the bundle is no longer the precision it says, and the export
fails with the best plan found. The plan (precision per weight, drop, size, every trial) goes into the
manifest.

Static int8 (what a CNN gets) plans the same way over the layers that carry a weight (Conv, Gemm,
MatMul): a probe quantizes only that layer (its weight and the activations it reads and writes), a plan
leaves its fp32 layers out of the quantization; the activation ranges are calibrated once and reused by
every probe and plan, and each plan gets the preset's output bias correction as the shipped bundle
does.

Encoder-decoders (several graphs: encoder, decoder, and with a KV cache the cross-attention and decoder
step) are planned over the weights of all their graphs (plan keys ``<graph file>:<node>``); the score
is BLEU (points, 0-100) of greedy generations on the first ``MAX_GENERATION_EXAMPLES`` validation
examples, and a probe's SNR is of the teacher-forced decoder logits. On a target, their greedy tokens
are generated there (``edgekit validate-bundle --generate``) and scored here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.export.plans import (
    LADDERS,
    GenerationScore,
    LabelScore,
    Planner,
    StaticPlans,
    build_mixed,
    count_examples,
    first_examples,
    quantized_weights,
)
from edgekit.log import info as log
from edgekit.metrics import METRIC_NAMES, budget_score_phrase

MAX_FLOAT_SHARE = 0.5  # of the quantized weights' fp32 bytes
MAX_EXAMPLES = 2000  # validation examples the drop is measured on
# parity inputs each sensitivity probe runs: the probes' cost is inference (MiniLM-L6: 1.0 s of a 1.3 s
# probe on 256 inputs), and a ranking in dB needs far fewer examples than an accuracy does
PROBE_EXAMPLES = 64
# encoder-decoders: validation examples generated per trial (greedy, up to max_target_length tokens each)
MAX_GENERATION_EXAMPLES = 500


def check_budget(job, val_split) -> None:
    """One line, before any quantization, when ``--max-drop`` cannot apply to this export (the preset,
    or no validation data)."""
    preset = job.preset
    refuse = None
    if preset.precision not in LADDERS:
        refuse = f"--max-drop plans int8 and int4 bundles; {preset.precision} is not quantized (drop --max-drop)"
    elif preset.format != "onnx":
        refuse = f"--max-drop plans ONNX bundles; {job.title} has no per-layer precision (use --format onnx)"
    elif val_split is None or len(val_split) == 0:
        refuse = "--max-drop needs validation data: export a stage folder that has its recipe, or give --recipe"
    if refuse:
        raise EdgekitError(refuse)


def within_budget(
    job,
    source: Path,
    kept: Path,
    val_split,
    val_batches: list[dict[str, np.ndarray]],
    max_drop: float,
    as_bundle,
    targets=(),
    static: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The bundle folder to ship and the budget record: ``kept`` (the preset's candidate folder) when
    its drop is within ``max_drop`` points, else the mixed-precision plan that is (see the module
    docstring). ``source``: the fp32 bundle folder; ``val_batches``: the validation split encoded;
    ``as_bundle(name)``: a new candidate folder; ``static``: for a static int8 bundle, its calibration
    batches and the nodes the preset kept fp32 (``{"calibration": ..., "fp32_nodes": ...}``). The search
    runs on this host; with ``targets`` the chosen graph's drop is then measured on each and must hold
    there too."""
    started = time.perf_counter()
    planner, limit = _planner(job, source, val_split, val_batches, as_bundle, static)
    scorer, weights = planner.scorer, planner.weights
    first = planner.trial(0, [], first=kept)
    record: dict[str, Any] = {
        "max_drop_points": max_drop,
        "metric": scorer.metric,
        "split": val_split.name,
        "examples": int(limit),
        "fp32_score": planner.fp32_score,
        **({"fp32_accuracy": planner.fp32_score} if scorer.metric == "accuracy" else {}),
        "weights": len(weights),
        "max_float_share": MAX_FLOAT_SHARE,
        "mode": "static"
        if static is not None
        else job.preset.precision
        if job.preset.precision == "int4"
        else "dynamic",
    }
    log(
        f"export: budget {max_drop:g} points; {budget_score_phrase(record, first)} on {limit} validation examples "
        f"(drop {first['drop_points']:.2f} points)"
    )
    if first["drop_points"] <= max_drop:
        chosen = first
        record.update(_summary(planner, first, [], []))
    else:
        chosen = _mixed_plan(job, planner, record, max_drop)
    folder = kept if chosen is first else chosen["path"]
    record["on_targets"] = _on_targets(targets, folder, scorer, planner.fp32_score, max_drop)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return folder, record


def _planner(job, source: Path, val_split, val_batches, as_bundle, static) -> tuple[Planner, int]:
    """The budget's planner over the prepared fp32 graphs (every quantizable weight, the builder of each
    graph, the task's scorer), and how many validation examples it scores."""
    from edgekit.export.onnx import _prepare, _scratch_directory
    from edgekit.export.presets import embedding_precision, resolve_reduce_range

    preset = job.preset  # check_budget ran before quantization (build_bundle)
    files = [g.file for g in job.manifest.graphs]
    prepared = as_bundle("budget-prepared")
    with _scratch_directory():
        for name in files:
            _prepare((Path(source) / name).resolve(), (prepared / name).resolve())
    quant, reduce_range = preset.quantization, resolve_reduce_range(preset.quantization["reduce_range"])
    weights, builders = [], {}
    for name in files:
        path = prepared / name
        if static is not None:
            weights += quantized_weights(path, "int8", "fp32", static_fp32=list(static["fp32_nodes"]))
            builders[name] = StaticPlans(
                path, job.scratch, quant, reduce_range, static["calibration"], static["fp32_nodes"]
            )
        else:
            weights += quantized_weights(path, preset.precision, embedding_precision(preset))
            builders[name] = lambda out, plan, probe, path=path: build_mixed(path, out, plan, quant, reduce_range)
    if len(files) > 1:  # plan keys name the graph too: encoder and decoder graphs share node names
        for w in weights:
            w.node = f"{w.graph}:{w.name}"

    def build(folder: Path, plan: dict[str, str], probe: bool) -> None:
        for name in files:
            builders[name](
                folder / name, {w.name: plan[w.node] for w in weights if w.graph == name and w.node in plan}, probe
            )

    if job.handle.spec.generates:
        val_batches = first_examples(val_batches, MAX_GENERATION_EXAMPLES)
        limit = count_examples(val_batches)
        references = [str(t) for t in val_split.labels[:limit]]
        tokens = int(job.manifest.preprocessing.get("max_target_length", 128))
        scorer = GenerationScore(val_batches, references, job.encoder.tokenizer, tokens)
    else:
        limit = count_examples(val_batches)
        scorer = LabelScore(files[0], val_batches, np.asarray(val_split.labels[:limit]))
    return Planner(prepared, weights, build, scorer, as_bundle), limit


def _mixed_plan(job, planner: Planner, record: dict[str, Any], max_drop: float) -> dict[str, Any]:
    """The preset's bundle drops too much: rank the weights by sensitivity, search the fewest moves to
    higher precision that keep the drop within ``max_drop`` (at most MAX_FLOAT_SHARE of them fp32); the
    chosen trial, or one line when none holds."""
    probe_batches = first_examples(job.batches, PROBE_EXAMPLES)
    ranked = planner.sensitivity(probe_batches)
    record["sensitivity_examples"] = count_examples(probe_batches)
    moves = planner.moves(ranked)
    limit_k = 0  # the most moves whose plan keeps at most MAX_FLOAT_SHARE in fp32
    for k in range(1, len(moves) + 1):
        if planner.float_share(planner.plan(moves[:k])) > MAX_FLOAT_SHARE:
            break
        limit_k = k
    best = _search(planner, moves, limit_k, max_drop)
    record.update(_summary(planner, best, moves, ranked))
    if best["drop_points"] > max_drop:
        raise EdgekitError(
            f"no quantization plan keeps the validation {METRIC_NAMES[planner.scorer.metric]} drop within "
            f"--max-drop {max_drop:g} points: the best found drops {best['drop_points']:.2f} points with "
            f"{record['returned_count']} of {len(planner.weights)} weights at higher precision "
            f"({best['float_share']:.0%} of them fp32, the most a plan may keep at {MAX_FLOAT_SHARE:.0%}); no bundle "
            "written (raise --max-drop, or export --fp32)"
        )
    log(
        f"export: budget met with {record['returned_count']} of {len(planner.weights)} weights at higher precision: "
        f"drop {best['drop_points']:.2f} points, {best['model_bytes'] / 1e6:.2f} MB"
    )
    return best


def _on_targets(targets, folder: Path, scorer, fp32_score: float, max_drop: float) -> list[dict[str, Any]]:
    """The chosen bundle's score and drop on each target's own kernels; over budget there: one line."""
    from edgekit.targets import target_environment

    results = []
    for target in targets:
        log(f"export: budget check on {target.name}")
        with target.session() as session:
            score = scorer.score_on(session, folder)
            where = {**target.describe(), **target_environment(session)}
        drop = round((fp32_score - score) * 100, 4)
        results.append({"score": score, scorer.metric: score, "drop_points": drop, "measured_on": where})
        if drop > max_drop:
            raise EdgekitError(
                f"the budgeted bundle drops {drop:.2f} points on {where.get('device') or where.get('machine')} "
                f"(--max-drop {max_drop:g}; the plan was searched on this host's kernels, where it met it); "
                "no bundle written (raise --max-drop)"
            )
    return results


def _search(planner: Planner, moves: list[tuple[str, str]], limit_k: int, max_drop: float) -> dict[str, Any]:
    """The fewest moves (up to ``limit_k``) whose plan is within budget: doubling, then bisection; the
    lowest-drop trial when none is."""
    from tqdm.auto import tqdm

    bar = tqdm(desc="budget: plans", unit="plan", leave=False)
    low, high, k = 0, None, 1
    while k <= limit_k:
        bar.update(1)
        if planner.trial(k, moves)["drop_points"] <= max_drop:
            high = k
            break
        low, k = k, k * 2
    if high is None and limit_k > low:
        bar.update(1)
        if planner.trial(limit_k, moves)["drop_points"] <= max_drop:
            high = limit_k
    while high is not None and high - low > 1:
        middle = (low + high) // 2
        bar.update(1)
        if planner.trial(middle, moves)["drop_points"] <= max_drop:
            high = middle
        else:
            low = middle
    bar.close()
    if high is not None:
        return planner.trials[high]
    return min(planner.trials.values(), key=lambda t: (t["drop_points"], t["moves"]))


def _summary(planner: Planner, chosen: dict[str, Any], moves, ranked) -> dict[str, Any]:
    plan, base = planner.plan(moves[: chosen["moves"]]), planner.base
    counts: dict[str, int] = {}
    for precision in plan.values():
        counts[precision] = counts.get(precision, 0) + 1
    returned = [{"node": n, "from": base[n], "to": p} for n, p in plan.items() if p != base[n]]
    return {
        "score": chosen["score"],
        **({"accuracy": chosen["accuracy"]} if "accuracy" in chosen else {}),
        "drop_points": chosen["drop_points"],
        "passed": True,  # a plan over budget is an error, never written
        "moves": chosen["moves"],
        "returned": returned,
        "returned_count": len(returned),
        "precision_counts": counts,
        "float_share": chosen["float_share"],
        "model_bytes": chosen["model_bytes"],
        "plan": plan,
        "sensitivity": ranked,
        "trials": [{k: v for k, v in t.items() if k != "path"} for _, t in sorted(planner.trials.items())],
    }
