"""``edgekit export``: the checked flags, the export stage, and the one-screen summary of what it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry
from edgekit.cli.common import (
    ConnectTimeoutOpt,
    IdentityOpt,
    PortOpt,
    RemoteEdgekitOpt,
    SshConfigOpt,
    SshOptionOpt,
    _ssh_target,
)
from edgekit.cli.options import (
    ForceOpt,
    OutOpt,
    RecipeOpt,
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
    """Export a model to a parity-checked ONNX, TorchScript or ExecuTorch bundle (int8 by default)."""
    from edgekit import stages
    from edgekit.artifacts import check_output, lock_output

    precision = _precision(int8, int4, fp16, fp32, static, dynamic, min_agreement, max_drop, allow_drop, calib_samples)
    check_output(out, force)
    lock_output(out)
    ssh = _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout)
    if ssh is not None and device and len(device) > 1:
        raise EdgekitError("--host checks one device; give at most one --device with it")
    loaded = None
    if recipe is not None:
        from edgekit.recipe import load_recipe

        loaded = load_recipe(recipe)
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
    _print_summary(out)


def _precision(
    int8, int4, fp16, fp32, static, dynamic, min_agreement, max_drop, allow_drop, calib_samples
) -> str | None:
    """The precision the flags ask for (None: the preset's), after refusing flags that contradict each other."""
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
    return chosen[0] if chosen else ("int8" if static or dynamic else None)


def _print_summary(out: Path) -> None:
    """What the export wrote: parity per precision (and where it was judged), the graph variant kept, the
    files and sizes, the budget's outcome."""
    from edgekit.records import read_manifest

    manifest = read_manifest(out)
    budgeted = bool((manifest.quantization or {}).get("budget"))
    for name, p in manifest.parity.items():
        print(f"parity {name} (on {_place(p.get('measured_on') or {})}): " + _parity_phrase(name, p, budgeted))
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


def _place(where: dict) -> str:
    """Where parity was judged: this host, or a device (emulated or over SSH) and its machine."""
    machine = where.get("machine", "?")
    if where.get("where") == "host":
        return f"this host, {machine}"
    return f"{where.get('device') or machine}{' emulated' if where.get('emulated') else ''}, {machine}"


def _parity_phrase(name: str, p: dict, budgeted: bool) -> str:
    outcome = (
        "passed"
        if p["passed"]
        else "below the agreement gate, which --max-drop replaces"
        if budgeted and name != "fp32"
        else "FAILED"
    )
    return (
        f"label agreement {p['label_agreement']:.2%}, SNR {p['snr_db']:.1f} dB, "
        f"max |diff| {p['max_abs_diff']:.3g} on {p['examples']} examples: {outcome}"
    )
