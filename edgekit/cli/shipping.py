"""Commands that ship and measure: export, eval, bench, report (and the hidden validate-bundle)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry
from edgekit.cli.common import (
    ConnectTimeoutOpt,
    EmulateOpt,
    IdentityOpt,
    PortOpt,
    RemoteEdgekitOpt,
    SshConfigOpt,
    SshOptionOpt,
    _print_json,
    _print_metrics,
    _ssh_target,
)
from edgekit.cli.options import (
    DatasetOpt,
    ForceOpt,
    LabelColOpt,
    OutOpt,
    RecipeOpt,
    TextColOpt,
)
from edgekit.errors import EdgekitError


def export(
    model: Annotated[
        str,
        typer.Argument(
            help="A finetune/distill/lora/prune output folder, or a HF id/path or torchvision name with --recipe."
        ),
    ],
    out: OutOpt,
    fmt: Annotated[
        Optional[str],
        typer.Option(
            "--format",
            help=", ".join(f"{e.name} ({e.summary})" for e in registry.entries("format"))
            + ". Default: the preset's, else onnx.",
        ),
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Quantize to int8 (the default without a preset).")] = False,
    int4: Annotated[
        bool,
        typer.Option(
            "--int4", help="4-bit block-wise weights and embeddings, ONNX (the cpu-int4 preset): the smallest file."
        ),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 ONNX (GPUs: the t4-fp16 preset).")] = False,
    fp32: Annotated[bool, typer.Option("--fp32", help="Keep float32.")] = False,
    static: Annotated[
        bool, typer.Option("--static", help="Static int8 (QDQ, per-channel) calibrated on task data.")
    ] = False,
    dynamic: Annotated[
        bool, typer.Option("--dynamic", help="Dynamic int8 (weights int8, activations quantized at run time).")
    ] = False,
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset",
            help=f"Export preset in export/ ({registry.choices('preset')}) or a .yaml; default from --format and precision.",
        ),
    ] = None,
    calib_samples: Annotated[
        Optional[int], typer.Option("--calib-samples", help="Training examples used to calibrate static int8.")
    ] = None,
    min_agreement: Annotated[
        Optional[float],
        typer.Option("--min-agreement", help="Least int8-vs-fp32 label agreement to accept, in [0, 1]."),
    ] = None,
    max_drop: Annotated[
        Optional[float],
        typer.Option(
            "--max-drop",
            help="Most validation accuracy (points; BLEU points for encoder-decoders) quantization may cost; over it the most sensitive weights go back to int8/fp32 (int8 and int4 ONNX).",
        ),
    ] = None,
    allow_drop: Annotated[
        bool, typer.Option("--allow-drop", help="Keep the bundle even when parity fails (recorded in the manifest).")
    ] = False,
    no_kv_cache: Annotated[
        bool,
        typer.Option(
            "--no-kv-cache",
            help="Encoder-decoders: export the cacheless decoder (re-run over every token so far) instead of the cached step.",
        ),
    ] = False,
    recipe: RecipeOpt = None,
    force: ForceOpt = False,
    device: Annotated[
        Optional[list[str]],
        typer.Option(
            "--device",
            "-d",
            help="Judge int8/fp16 parity on this emulated device (repeatable; default for a preset with a target, e.g. arm64-int8: its devices, when built), or with --host the device's profile.",
        ),
    ] = None,
    host: Annotated[
        Optional[str],
        typer.Option("--host", help="Judge int8/fp16 parity on this SSH host, on the device's own kernels."),
    ] = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_config: SshConfigOpt = None,
    ssh_option: SshOptionOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    connect_timeout: ConnectTimeoutOpt = 15,
) -> None:
    """Export a model to a parity-checked ONNX or TorchScript bundle (int8 by default)."""
    from edgekit import stages
    from edgekit.artifacts import check_output

    chosen = [name for name, flag in (("int8", int8), ("int4", int4), ("fp16", fp16), ("fp32", fp32)) if flag]
    if len(chosen) > 1:
        raise EdgekitError(f"--{' and --'.join(chosen)} contradict each other; give one precision")
    if static and dynamic:
        raise EdgekitError("--static and --dynamic contradict each other; give one")
    if (static or dynamic) and chosen and chosen[0] != "int8":
        raise EdgekitError(f"--{'static' if static else 'dynamic'} is an int8 mode; drop it or use --int8")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise EdgekitError(f"--min-agreement {min_agreement} is outside [0, 1]")
    if max_drop is not None and chosen and chosen[0] in ("fp16", "fp32"):
        raise EdgekitError(f"--max-drop plans int8 and int4 bundles; --{chosen[0]} is not quantized (drop --max-drop)")
    if max_drop is not None and allow_drop:
        raise EdgekitError("--max-drop and --allow-drop contradict each other: the budget is the gate; give one")
    if calib_samples is not None and calib_samples < 1:
        raise EdgekitError(f"--calib-samples {calib_samples} must be at least 1")
    check_output(out, force)
    from edgekit.artifacts import lock_output

    lock_output(out)
    ssh = _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout)
    if ssh is not None and device and len(device) > 1:
        raise EdgekitError("--host checks one device; give at most one --device with it")
    loaded = None
    if recipe is not None:
        from edgekit.recipe import load_recipe

        loaded = load_recipe(recipe)
    precision = chosen[0] if chosen else ("int8" if static or dynamic else None)
    stages.export(
        model,
        out,
        preset_name=preset,
        precision=precision,
        fmt=fmt,
        mode="static" if static else "dynamic" if dynamic else None,
        recipe=loaded,
        calib_samples=calib_samples,
        min_agreement=min_agreement,
        allow_drop=allow_drop,
        force=force,
        devices=list(device or []),
        ssh=ssh,
        kv_cache=False if no_kv_cache else None,
        max_drop=max_drop,
    )
    from edgekit.records import read_manifest

    manifest = read_manifest(out)
    budgeted = bool((manifest.quantization or {}).get("budget"))
    for name, p in manifest.parity.items():
        where = p.get("measured_on") or {}
        place = (
            (
                f"{where.get('device') or where.get('machine', '?')}{' emulated' if where.get('emulated') else ''}, "
                f"{where.get('machine', '?')}"
            )
            if where.get("where") != "host"
            else f"this host, {where.get('machine', '?')}"
        )
        print(
            f"parity {name} (on {place}): label agreement {p['label_agreement']:.2%}, SNR {p['snr_db']:.1f} dB, "
            f"max |diff| {p['max_abs_diff']:.3g} on {p['examples']} examples: "
            + (
                "passed"
                if p["passed"]
                else "below the agreement gate, which --max-drop replaces"
                if budgeted and name != "fp32"
                else "FAILED"
            )
        )
    optimization = manifest.graph_optimization or {}
    variants = optimization.get("variants", {})
    if len(variants) > 1 and all("p50_ms" in v for v in variants.values()):
        timings = ", ".join(f"{k} {v['p50_ms']:.3f} ms" for k, v in variants.items())
        print(f"graph: kept {optimization['kept']} ({timings}; p50 at batch 1 on this CPU)")
    elif len(variants) > 1:
        sizes = ", ".join(f"{k} {v['model_bytes'] / 1e6:.2f} MB" for k, v in variants.items())
        close = ", ".join(f"{k} {v['label_agreement']:.2%}/{v['snr_db']:.1f} dB" for k, v in variants.items())
        print(
            f"graph: kept {optimization['kept']} ({sizes}; agreement/SNR {close}; by rule, not timing: the same export gives the same file)"
        )
    files = ", ".join(g.file for g in manifest.graphs)
    print(
        f"{files}: {manifest.sizes['model_bytes'] / 1e6:.2f} MB {manifest.format} {manifest.precision} "
        f"(fp32 {manifest.sizes['fp32_model_bytes'] / 1e6:.2f} MB); wrote {out}"
    )
    budget = (manifest.quantization or {}).get("budget")
    if budget:
        from edgekit.metrics import budget_score_phrase

        counts = ", ".join(f"{n} {k}" for k, n in sorted(budget["precision_counts"].items()))
        print(
            f"budget: {budget_score_phrase(budget)} on "
            f"{budget['examples']} examples: drop {budget['drop_points']:.2f} points (allowed {budget['max_drop_points']:g}); "
            f"weights {counts}; {budget['returned_count']} returned to higher precision"
        )
    if manifest.sizes.get("breakdown"):
        from edgekit.export.sizes import describe

        print(f"size: {describe(manifest.sizes['breakdown'])}")


def evaluate(
    target: Annotated[Path, typer.Argument(help="An exported bundle (torch-free) or a model stage folder.")],
    test: Annotated[
        Optional[str], typer.Option("--data", "--test", help="Data file (CSV/TSV/JSONL) or ImageFolder folder.")
    ] = None,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option("--split", help="Split of --dataset to use: train, val or test.")] = "test",
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Write an eval stage folder with meta.json.")
    ] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics as JSON.")] = None,
    force: ForceOpt = False,
    device: Annotated[
        str, typer.Option("--device", "-d", help="With --emulate or --host: the device profile (rpi4, rpi5, ...).")
    ] = "rpi4",
    emulate: EmulateOpt = False,
    host: Annotated[
        Optional[str],
        typer.Option(
            "--host",
            help="Score the bundle on this SSH host ([user@]host or an ssh config alias): the examples are sent there, the device runs them.",
        ),
    ] = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_config: SshConfigOpt = None,
    ssh_option: SshOptionOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    connect_timeout: ConnectTimeoutOpt = 15,
) -> None:
    """Accuracy, macro F1 and confusion matrix of an exported bundle on its runtime: here, on a device over SSH, or emulated."""
    from edgekit.artifacts import check_output, is_stage
    from edgekit.bench.runners import Request, choose
    from edgekit.data.splits import load_eval_split
    from edgekit.recipe import DataConfig
    from edgekit.records import MANIFEST, read_manifest

    if is_stage(target) and not (Path(target) / MANIFEST).is_file():  # a model stage: its PyTorch model
        if emulate or host:
            raise EdgekitError(f"{target} is a model stage (PyTorch); export it first to run it on a device")
        if not (test or dataset):
            raise EdgekitError(
                "give the evaluation data: --data FILE_OR_FOLDER or --dataset NAME (e.g. --dataset digits)"
            )
        from edgekit.stages import evaluate_stage

        metrics = evaluate_stage(
            target, test=test, dataset=dataset, split=split, text_column=text_column, label_column=label_column
        )
        _print_metrics(metrics)
        _print_json(json_out, metrics)
        return
    manifest = read_manifest(target)
    if not (test or dataset):
        raise EdgekitError("give the evaluation data: --data FILE_OR_FOLDER or --dataset NAME (e.g. --dataset digits)")
    if out is not None:
        from edgekit.artifacts import lock_output

        check_output(out, force)
        lock_output(out)
    cfg = DataConfig(
        dataset=dataset,
        train=None,
        test=test,
        text_column=text_column or "text",
        label_column=label_column or "label",
        image_size=manifest.preprocessing.get("image_size"),
    )
    data_split = load_eval_split(cfg, manifest.task, manifest.label_names, split)
    from edgekit.stages import evaluate_bundle

    entry = choose(host=host, emulate=emulate)
    request = Request(
        device=device,
        ssh=_ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout),
    )
    measured = entry.load().evaluate(target, data_split, manifest.task, manifest.label_names, request)
    metrics = evaluate_bundle(
        target,
        data_split,
        out,
        force=force,
        metrics=measured,
        config={
            "bundle": str(target),
            "data": test or dataset,
            "split": split,
            **({"emulated": device} if emulate else {"host": host} if host else {}),
        },
    )
    where = metrics.get("measured_on")
    if where:
        print(
            f"measured on {where.get('device')} ({where['machine']}, {where['cpu_model']}"
            f"{', emulated under QEMU' if where.get('emulated') else ''}; onnxruntime {where['onnxruntime']})"
        )
    _print_metrics(metrics)
    _print_json(json_out, metrics)


def bench(
    bundles: Annotated[list[Path], typer.Argument(help="One or more exported bundles.")],
    device: Annotated[
        str, typer.Option("--device", "-d", help=f"Device profile ({registry.choices('profile')}) or a profile .yaml.")
    ] = "cpu",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
    runs: Annotated[Optional[int], typer.Option("--runs", help="Timed runs (default: the profile's).")] = None,
    batch_size: Annotated[
        Optional[list[int]], typer.Option("--batch-size", help="Batch sizes to measure (repeatable).")
    ] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Real inputs: a CSV/TSV/JSONL file (text) or ImageFolder folder.")
    ] = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    host: Annotated[
        Optional[str],
        typer.Option("--host", help="Bench on this SSH host ([user@]host or an ssh config alias) instead of here."),
    ] = None,
    port: PortOpt = None,
    identity: IdentityOpt = None,
    ssh_config: SshConfigOpt = None,
    ssh_option: SshOptionOpt = None,
    remote_edgekit: RemoteEdgekitOpt = "edgekit",
    connect_timeout: ConnectTimeoutOpt = 15,
    run_timeout: Annotated[float, typer.Option("--run-timeout", help="Seconds the remote benchmark may take.")] = 1800,
    emulate: EmulateOpt = False,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Time the bundles in interleaved rounds in one process (A B, B A, ...) and give each one's speed ratio to the first, with a 95% interval and a verdict.",
        ),
    ] = False,
    rounds: Annotated[
        Optional[int],
        typer.Option(
            "--rounds", help="Interleaved rounds of --compare (default: rounds of ~10 ms per bundle, at least 20)."
        ),
    ] = None,
    min_effect: Annotated[
        float,
        typer.Option("--min-effect", help="Relative difference under which --compare says 'no difference' (0.03: 3%)."),
    ] = 0.03,
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="Load scenario (MLPerf LoadGen's): single-stream (one query after another), offline (best throughput over batch sizes and threads), server (Poisson arrivals: --rate, or the highest rate holding --p99-bound).",
        ),
    ] = "single-stream",
    rate: Annotated[
        Optional[float], typer.Option("--rate", help="Server scenario: arrivals per second (Poisson).")
    ] = None,
    duration: Annotated[
        Optional[float], typer.Option("--duration", help="Server scenario: seconds per run (default 10).")
    ] = None,
    p99_bound: Annotated[
        Optional[float],
        typer.Option(
            "--p99-bound",
            help="Server scenario: p99 latency bound in ms; without --rate, search the highest rate holding it.",
        ),
    ] = None,
    output_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--output-tokens",
            help="Seq2seq bundles: tokens generated per timed run, EOS or not (default: the profile's output_tokens).",
        ),
    ] = None,
) -> None:
    """Measure size, latency and memory of bundles on a device profile (torch-free), here, over SSH or emulated."""
    from edgekit.bench.run import markdown_table
    from edgekit.bench.runners import Request, check_bench_data, choose

    if runs is not None and runs < 1:
        raise EdgekitError("--runs must be at least 1")
    if output_tokens is not None and output_tokens < 1:
        raise EdgekitError(
            f"--output-tokens must be at least 1 (a run generates that many tokens), not {output_tokens}"
        )
    if batch_size and any(b < 1 or b > 4096 for b in batch_size):
        raise EdgekitError(
            f"--batch-size {min(batch_size) if min(batch_size) < 1 else max(batch_size)} must be from 1 to 4096"
        )
    if not (math.isfinite(run_timeout) and run_timeout > 0) or connect_timeout < 1:
        raise EdgekitError("--run-timeout and --connect-timeout must be positive numbers of seconds")
    load = _load_scenario(bundles, compare, rounds, min_effect, scenario, rate, duration, p99_bound)
    entry = choose(host=host, emulate=emulate)
    check_bench_data(entry, data)
    request = Request(
        device=device,
        runs=runs,
        batch_sizes=tuple(batch_size or ()),
        **load,
        output_tokens=output_tokens,
        items=_bench_items(bundles[0], data, text_column or "text", label_column or "label") if data else None,
        run_timeout=run_timeout,
        ssh=_ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout),
    )
    document = entry.load().bench(list(bundles), request)
    print(markdown_table(document))
    if len(bundles) == 1:
        document = {**document, **{k: v for k, v in document["results"][0].items() if k != "device"}}
    _print_json(json_out, document)
    remote_code = (document.get("remote") or {}).get("exit_code")
    if document.get("incomplete"):
        raise EdgekitError(f"incomplete result (recorded as not valid): {document['error']}")
    if remote_code:
        from edgekit.bench.ssh import RemoteError

        raise RemoteError(
            f"edgekit bench on {host} exited with code {remote_code}: {document['remote'].get('error', '')}",
            remote_code,
        )
    failed = [r for r in document["results"] if "error" in r]
    if failed:
        raise EdgekitError(
            f"{len(failed)} of {len(document['results'])} bundles could not be measured "
            f"(recorded as incomplete): {failed[0]['error']}"
        )
    if not document["valid"]:
        reasons = "; ".join(r for res in document["results"] for r in res.get("invalid_reasons", []))
        print(f"warning: result not valid: {reasons}", file=sys.stderr)


SCENARIOS = ("single-stream", "offline", "server")


def _load_scenario(bundles, compare, rounds, min_effect, scenario, rate, duration, p99_bound) -> dict:
    """The checked --compare and --scenario options, as Request fields."""

    def positive(value, option, unit):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise EdgekitError(f"{option} must be a positive, finite number of {unit}, not {value:g}")

    if scenario not in SCENARIOS:
        raise EdgekitError(f"--scenario {scenario} is not one of {', '.join(SCENARIOS)}")
    positive(rate, "--rate", "queries per second")
    positive(duration, "--duration", "seconds")
    positive(p99_bound, "--p99-bound", "milliseconds")
    if scenario != "server" and (rate, duration, p99_bound) != (None, None, None):
        raise EdgekitError("--rate, --duration and --p99-bound belong to --scenario server")
    if scenario == "server" and rate is None and p99_bound is None:
        raise EdgekitError(
            "--scenario server needs --rate QPS (one run at that rate) or --p99-bound MS "
            "(search for the highest rate whose p99 holds it)"
        )
    if compare:
        if len(bundles) < 2:
            raise EdgekitError("--compare needs two or more bundles (the first is the baseline)")
        if scenario != "single-stream":
            raise EdgekitError("--compare times the single-stream scenario; drop --scenario or --compare")
        if rounds is not None and rounds < 2:
            raise EdgekitError("--rounds must be at least 2")
        if not (math.isfinite(min_effect) and 0 <= min_effect < 1):
            raise EdgekitError(f"--min-effect must be a fraction from 0 to 1 (0.03 is 3%), not {min_effect:g}")
    return {
        "scenario": {"name": scenario, "rate": rate, "duration": duration or 10.0, "p99_bound_ms": p99_bound}
        if scenario != "single-stream"
        else None,
        "compare": {"rounds": rounds, "min_effect": min_effect} if compare else None,
    }


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by 'edgekit run'.")],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="Where to write report.md/.html/.json and plots (default: the first run folder)."
        ),
    ] = None,
) -> None:
    """Write report.md, a self-contained report.html, report.json and plots for one or more runs."""
    from edgekit.report import write_report
    from edgekit.report.tables import text_table

    target = out or runs[0]
    document = write_report(list(runs), target)
    print(text_table(document["rows"]))
    print(
        f"\nreport: {target / 'report.md'}, {target / 'report.html'}, {target / 'report.json'}, {len(document['plots'])} plots"
    )


def validate_bundle(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (its manifest and model files).")],
    inputs: Annotated[Path, typer.Argument(help="INPUTS.npz: arrays named <batch>__<input name>.")],
    outputs: Annotated[Path, typer.Argument(help="OUTPUTS.npz to write: the logits of each batch.")],
    generate: Annotated[
        int,
        typer.Option(
            "--generate", min=0, help="Encoder-decoders: save greedy token ids of up to this many new tokens."
        ),
    ] = 0,
) -> None:
    """Run a bundle on saved inputs and save its logits, or with --generate its greedy tokens (how an
    export checks parity, and a budget its BLEU, on a target)."""
    from edgekit.runtime.validate import _main

    _main(str(bundle), str(inputs), str(outputs), "0", str(generate))


def _bench_items(bundle: Path, data: Path, text_column: str, label_column: str) -> list:
    from edgekit.data.images import read_image_folder
    from edgekit.data.tables import read_table
    from edgekit.records import read_manifest
    from edgekit.tasks import task_spec

    images = task_spec(read_manifest(bundle).task).modality == "image"
    items = read_image_folder(data)[0] if images else read_table(data, text_column, label_column)[0]
    return items[:2000]
