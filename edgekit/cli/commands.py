"""Command bodies. Each parses flags into a recipe or paths and calls one stage."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry
from edgekit.cli.options import (
    DatasetOpt,
    ForceOpt,
    ImageSizeOpt,
    LabelColOpt,
    OutOpt,
    RecipeOpt,
    SeedOpt,
    SetOpt,
    TaskOpt,
    TestOpt,
    TextColOpt,
    TrainOpt,
    ValOpt,
    WriteRecipeOpt,
    build_recipe,
    data_overrides,
    write_recipe_file,
)
from edgekit.errors import EdgekitError

EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs.")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: by model family).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Training batch size.")]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume", help="Continue an interrupted run from its last checkpoint (same command and settings)."),
]
PortOpt = Annotated[Optional[int], typer.Option("--port", help="SSH port (default: ssh's).")]
IdentityOpt = Annotated[Optional[Path], typer.Option("--identity", "-i", help="SSH private key file.")]
SshConfigOpt = Annotated[Optional[Path], typer.Option("--ssh-config", help="ssh configuration file (ssh -F).")]
SshOptionOpt = Annotated[
    Optional[list[str]],
    typer.Option("--ssh-option", help="Extra ssh -o option, e.g. UserKnownHostsFile=~/k (repeatable)."),
]
RemoteEdgekitOpt = Annotated[str, typer.Option("--remote-edgekit", help="The edgekit command on the host.")]
ConnectTimeoutOpt = Annotated[int, typer.Option("--connect-timeout", help="Seconds to wait for the SSH connection.")]
EmulateOpt = Annotated[
    bool,
    typer.Option(
        "--emulate",
        help="Run on the emulated device (aarch64 under QEMU, the profile's CPU model; build it with 'edgekit devices emulate DEVICE'). Latency is never valid there; labels and accuracy are exact.",
    ),
]


def root(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="Show debug messages too.")] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors (progress bars stay; results still print).")
    ] = False,
) -> None:
    """edgekit: distil, compress, export and benchmark models for edge devices."""
    from edgekit import log

    log.configure(-1 if quiet else min(verbose, 1))
    if version:
        from edgekit import __version__

        print(f"edgekit {__version__}")
        raise typer.Exit(0)


def _print_json(path: Optional[Path], document) -> None:
    if path is not None:
        from edgekit.artifacts import write_json_atomic

        write_json_atomic(path, document)
        print(f"wrote {path}", file=sys.stderr)


def run(
    recipe: Annotated[
        Optional[Path], typer.Argument(help="Recipe YAML (default: the embedded digits recipe, no download).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run folder (default: ./runs/<recipe name>).")
    ] = None,
    sets: SetOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Re-run every stage, even unchanged ones.")] = False,
    write_recipe: WriteRecipeOpt = None,
) -> None:
    """Run a whole recipe: teacher -> distill (or a sweep of strategies x student sizes) -> lora/prune -> int8 export -> eval -> bench -> report."""
    from edgekit.pipeline import run as run_pipeline
    from edgekit.recipe import load_recipe
    from edgekit.report.tables import text_table

    loaded = load_recipe(recipe, list(sets or []))
    write_recipe_file(loaded, write_recipe)
    out = out or Path("runs") / loaded.name
    print(f"edgekit run: {loaded.name} -> {out}", file=sys.stderr)
    document = run_pipeline(loaded, out, fresh=fresh)
    print(text_table(document["rows"]))
    print(
        f"\nreport: {out / 'report.md'}, {out / 'report.html'}, {out / 'report.json'}, {len(document['plots'])} plots"
    )


def finetune(
    model: Annotated[
        str,
        typer.Argument(
            help="Model to train: torchvision name, Hugging Face id or folder, or an edgekit stage folder (e.g. a distilled student)."
        ),
    ],
    out: OutOpt,
    recipe: RecipeOpt = None,
    train: TrainOpt = None,
    val: ValOpt = None,
    test: TestOpt = None,
    dataset: DatasetOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    task: TaskOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = None,
    pretrained: Annotated[
        Optional[bool],
        typer.Option(
            "--pretrained/--scratch", help="torchvision: start from ImageNet weights (downloads once) or from scratch."
        ),
    ] = None,
    lora: Annotated[
        bool,
        typer.Option(
            "--lora",
            help="Train LoRA adapters (peft) and the head instead of every weight, then merge them into a plain model.",
        ),
    ] = False,
    qlora: Annotated[
        bool,
        typer.Option(
            "--qlora",
            help="LoRA over the base stored in 4-bit NF4 with double quantization (bitsandbytes); merged against the dequantized base.",
        ),
    ] = False,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="LoRA rank (default 8).")] = None,
    lora_alpha: Annotated[
        Optional[int], typer.Option("--lora-alpha", help="LoRA alpha; updates are scaled by alpha/r (default 16).")
    ] = None,
    lora_dropout: Annotated[
        Optional[float], typer.Option("--lora-dropout", help="Dropout on the adapters' input (default 0.05).")
    ] = None,
    lora_targets: Annotated[
        Optional[str],
        typer.Option(
            "--lora-targets",
            help="Comma-separated module names (default: query,value for transformers; every non-grouped conv and non-head linear for CNNs).",
        ),
    ] = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    sets: SetOpt = None,
    force: ForceOpt = False,
    write_recipe: WriteRecipeOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Fine-tune a model on the task: every weight (the teacher of a distillation), or LoRA/QLoRA adapters merged back."""
    from edgekit import stages
    from edgekit.artifacts import RECIPE_FILE, is_stage

    overrides = data_overrides(train, val, test, dataset, text_column, label_column, task, image_size, seed)
    overrides.append(f"teacher.model={json.dumps(model)}")
    if pretrained is not None:
        overrides.append(f"teacher.pretrained={str(pretrained).lower()}")
    adapters = lora or qlora
    if adapters:
        overrides += ["lora.enabled=true", f"lora.qlora={str(qlora).lower()}"]
        values = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout}
        overrides += [f"lora.{k}={v}" for k, v in values.items() if v is not None]
        if lora_targets:
            overrides.append(f"lora.target_modules={json.dumps(_csv(lora_targets, str, '--lora-targets'))}")
    elif any(v is not None for v in (lora_r, lora_alpha, lora_dropout, lora_targets)):
        raise EdgekitError("--lora-r/--lora-alpha/--lora-dropout/--lora-targets need --lora or --qlora")
    else:
        overrides += ["lora.enabled=false", "lora.qlora=false"]
    overrides += _train_overrides("lora.train" if adapters else "teacher.train", epochs, lr, batch_size)
    # a stage folder (a distilled student, a pruned model) brings its own data unless other data is given
    source = Path(model)
    if recipe is None and not (train or dataset) and is_stage(source) and (source / RECIPE_FILE).is_file():
        recipe = source / RECIPE_FILE
    loaded = build_recipe(recipe, overrides, sets)
    if loaded.teacher.train is None:
        loaded.teacher.train = loaded.distill.train
    _check_out(out, force, resume)
    write_recipe_file(loaded, write_recipe)
    meta = stages.finetune(loaded, out, force=force, resume=resume, lora=loaded.lora if loaded.lora.active else None)
    _print_model_summary(meta, out)
    before = meta.get("metrics_before")
    if before and "accuracy" in before:
        nf4 = meta.get("metrics_nf4_base")
        print(
            f"accuracy before {meta['stage']}: {before['accuracy']:.2%}"
            + (f", NF4 base before training: {nf4['accuracy']:.2%}" if nf4 else "")
            + f", after (merged): {meta['metrics']['accuracy']:.2%}"
        )


def _csv(text: str, kind, flag: str) -> list:
    try:
        return [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise EdgekitError(
            f"{flag} {text!r}: give comma-separated {'whole numbers' if kind is int else 'numbers'}, e.g. "
            f"{'6,3' if kind is int else '0.7,0.3'}"
        ) from None


def distill(
    teacher: Annotated[
        list[str],
        typer.Option(
            "--teacher",
            help="Teacher: a finetune output folder, or a model already trained on the task. Repeat for --strategy multi-teacher.",
        ),
    ],
    out: OutOpt,
    student: Annotated[
        Optional[str],
        typer.Option(
            "--student", help="Student: torchvision name, Hugging Face id or folder (or use --student-layers)."
        ),
    ] = None,
    student_layers: Annotated[
        Optional[str],
        typer.Option(
            "--student-layers",
            help="Derive the student from a transformer teacher by keeping K of its layers; for --strategy successive the chain, e.g. 6,3,1.",
        ),
    ] = None,
    recipe: RecipeOpt = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help=f"{registry.choices('strategy')}.")] = None,
    temperature: Annotated[
        Optional[float], typer.Option("--temperature", "-T", help="Softmax temperature T (default 4).")
    ] = None,
    alpha: Annotated[
        Optional[float],
        typer.Option("--alpha", help="Weight of the distillation term (default 0.3): (1-alpha)*CE + alpha*T^2*KL."),
    ] = None,
    teacher_weights: Annotated[
        Optional[str],
        typer.Option("--teacher-weights", help="multi-teacher: one weight per teacher (e.g. 0.7,0.3), or 'learned'."),
    ] = None,
    feature_weight: Annotated[
        Optional[float],
        typer.Option(
            "--feature-weight",
            help="Add feature KD (pooled hidden state through a learned projection, MSE) with this weight.",
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline", help="Also train the same student on labels only for the same budget and record it."
        ),
    ] = False,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="Recompute teacher logits instead of using the on-disk transfer-set cache."),
    ] = False,
    resume: ResumeOpt = False,
    train: TrainOpt = None,
    val: ValOpt = None,
    test: TestOpt = None,
    dataset: DatasetOpt = None,
    text_column: TextColOpt = None,
    label_column: LabelColOpt = None,
    task: TaskOpt = None,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = None,
    epochs: EpochsOpt = None,
    lr: LrOpt = None,
    batch_size: BatchOpt = None,
    sets: SetOpt = None,
    force: ForceOpt = False,
    write_recipe: WriteRecipeOpt = None,
) -> None:
    """Distil one or more teachers into a smaller student (Hinton KD and its strategies)."""
    from edgekit import stages
    from edgekit.artifacts import is_stage

    first = Path(teacher[0])
    base = recipe
    if base is None and is_stage(first) and (first / "recipe.yaml").is_file() and not (train or dataset):
        base = first / "recipe.yaml"  # the teacher's data, unless new data is given
    overrides = data_overrides(train, val, test, dataset, text_column, label_column, task, image_size, seed)
    if student is not None:
        overrides.append(f"student.model={json.dumps(student)}")
    if student_layers is not None:
        overrides.append(f"student.layers={json.dumps(_csv(student_layers, int, '--student-layers'))}")
        if student is None:
            overrides.append("student.model=null")
    elif student is None and recipe is None and strategy != "self-quantized":
        raise EdgekitError(
            "say which student to train: --student MODEL, or --student-layers K to keep K of the teacher's layers"
        )
    for key, value in (
        ("strategy", strategy),
        ("temperature", temperature),
        ("alpha", alpha),
        ("feature_weight", feature_weight),
    ):
        if value is not None:
            overrides.append(f"distill.{key}={json.dumps(value)}")
    if teacher_weights is not None:
        if teacher_weights.strip().lower() == "learned":
            overrides.append("distill.learn_teacher_weights=true")
        else:
            overrides.append(f"distill.teacher_weights={json.dumps(_csv(teacher_weights, float, '--teacher-weights'))}")
    if baseline:
        overrides.append("distill.baseline=true")
    if no_cache:
        overrides.append("distill.cache=false")
    overrides.append(f"distill.teachers={json.dumps([str(t) for t in teacher[1:]])}")  # --teacher is the whole list
    overrides += _train_overrides("distill.train", epochs, lr, batch_size)
    loaded = build_recipe(base, overrides, sets)
    _check_out(out, force, resume)
    write_recipe_file(loaded, write_recipe)
    meta = stages.distill(loaded, teacher[0], out, force=force, resume=resume)
    _print_model_summary(meta, out)


def _check_out(out: Path, force: bool, resume: bool) -> None:
    """Before any work: the output is free (or --force), a --resume has its checkpoint and never
    replaces a folder it did not create, and no other edgekit is writing the same output."""
    from edgekit.artifacts import check_output, lock_output
    from edgekit.layout import checkpoint_folder

    if resume and not checkpoint_folder(out).exists():
        raise EdgekitError(
            f"nothing to resume for {out}: no checkpoint ({checkpoint_folder(out)}); run without --resume"
        )
    if resume and out.exists() and not force:
        raise EdgekitError(
            f"output folder {out} already exists and --resume does not replace it (a resumed run "
            "writes it at the end); pass --force to replace it, or choose another --out"
        )
    if not resume:
        check_output(out, force)
    lock_output(out)


def prune(
    model: Annotated[Path, typer.Argument(help="A finetune, distill, lora or prune output folder.")],
    out: OutOpt,
    method: Annotated[
        str,
        typer.Option("--method", help="; ".join(f"{e.name}: {e.summary}" for e in registry.entries("pruner")) + "."),
    ] = "l1-unstructured",
    amount: Annotated[
        float,
        typer.Option(
            "--amount", help="Fraction removed in every layer, in (0, 1): weights, heads, neurons or channels."
        ),
    ] = 0.3,
    recover_epochs: Annotated[
        int, typer.Option("--recover-epochs", help="Train this many epochs after pruning (0: none).")
    ] = 0,
    recover: Annotated[
        str,
        typer.Option(
            "--recover", help="Recovery: distill (from the unpruned model's logits) or finetune (labels only)."
        ),
    ] = "distill",
    calib_samples: Annotated[
        int, typer.Option("--calib-samples", help="Training examples used to score heads/neurons/channels.")
    ] = 256,
    force: ForceOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Prune a model: unstructured zeros made permanent, or remove heads/neurons/channels so it really shrinks."""
    from edgekit.compress.prune import prune_stage

    _check_out(out, force, resume)
    meta = prune_stage(
        model,
        out,
        method=method,
        amount=amount,
        recover_epochs=recover_epochs,
        recover=recover,
        calib_samples=calib_samples,
        force=force,
        resume=resume,
    )
    m = meta["metrics"]
    print(f"{'':<22} {'parameters (M)':>14} {'non-zero (M)':>12} {'accuracy (%)':>12}")
    print(
        f"{'before':<22} {meta['parameters_before'] / 1e6:14.3f} {meta['nonzero_parameters_before'] / 1e6:12.3f} "
        f"{100 * m['accuracy_before']:12.2f}"
    )
    print(
        f"{'pruned':<22} {meta['parameters'] / 1e6:14.3f} {m['nonzero_parameters'] / 1e6:12.3f} "
        f"{100 * m['accuracy_pruned']:12.2f}"
    )
    if recover_epochs:
        print(
            f"{'recovered (' + recover + ')':<22} {meta['parameters'] / 1e6:14.3f} {m['nonzero_parameters'] / 1e6:12.3f} "
            f"{100 * m['accuracy']:12.2f}"
        )
    removed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (m.get("removed") or {}).items())
    print(
        f"{method} {amount:.0%}: "
        + (f"removed {removed}; " if removed else "")
        + f"{m['sparsity']:.1%} of Linear/Conv weights are zero; p50 {m['latency_ms']['p50']:.3f} ms "
        f"(PyTorch CPU, batch 1); wrote {out}"
    )


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
    allow_drop: Annotated[
        bool, typer.Option("--allow-drop", help="Keep the bundle even when parity fails (recorded in the manifest).")
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

    chosen = [name for name, flag in (("int8", int8), ("fp16", fp16), ("fp32", fp32)) if flag]
    if len(chosen) > 1:
        raise EdgekitError(f"--{' and --'.join(chosen)} contradict each other; give one precision")
    if static and dynamic:
        raise EdgekitError("--static and --dynamic contradict each other; give one")
    if (static or dynamic) and chosen and chosen[0] != "int8":
        raise EdgekitError(f"--{'static' if static else 'dynamic'} is an int8 mode; drop it or use --int8")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise EdgekitError(f"--min-agreement {min_agreement} is outside [0, 1]")
    if calib_samples is not None and calib_samples < 1:
        raise EdgekitError(f"--calib-samples {calib_samples} must be at least 1")
    check_output(out, force)
    from edgekit.artifacts import lock_output

    lock_output(out)
    ssh = _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout) if host else None
    if ssh is not None and device and len(device) > 1:
        raise EdgekitError("--host checks one device; give at most one --device with it")
    loaded = None
    if recipe is not None:
        from edgekit.recipe import load_recipe

        loaded = load_recipe(recipe)
    precision = chosen[0] if chosen else ("int8" if static or dynamic else None)
    meta = stages.export(
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
    )
    manifest = json.loads((out / "manifest.json").read_text())
    for name, p in manifest["parity"].items():
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
            f"max |diff| {p['max_abs_diff']:.3g} on {p['examples']} examples: {'passed' if p['passed'] else 'FAILED'}"
        )
    optimization = manifest.get("graph_optimization") or {}
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
    files = ", ".join(g["file"] for g in manifest["graphs"])
    print(
        f"{files}: {meta['model_bytes'] / 1e6:.2f} MB {manifest['format']} {manifest['precision']} "
        f"(fp32 {meta['fp32_model_bytes'] / 1e6:.2f} MB); wrote {out}"
    )


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
    from edgekit.data.splits import load_eval_split
    from edgekit.recipe import DataConfig
    from edgekit.runtime.bundle import MANIFEST, read_manifest

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
        image_size=manifest["preprocessing"].get("image_size"),
    )
    data_split = load_eval_split(cfg, manifest["task"], manifest["label_names"], split)
    from edgekit.stages import evaluate_bundle

    measured = None
    if emulate and host:
        raise EdgekitError("--emulate and --host contradict each other; give one")
    if emulate:
        from edgekit.emulate.run import eval_emulated

        measured = eval_emulated(target, data_split, manifest["task"], manifest["label_names"], device)
    elif host:
        from edgekit.bench.ssh import ssh_session
        from edgekit.targets import eval_on, target_environment

        ssh = _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout)
        print(f"eval: {target} on {host}", file=sys.stderr)
        with ssh_session(ssh) as session:
            measured = eval_on(session, target, data_split, manifest["task"], manifest["label_names"])
            measured["measured_on"] = {
                "where": "device",
                "emulated": False,
                "device": device,
                "host": host,
                **target_environment(session),
            }
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
) -> None:
    """Measure size, latency and memory of bundles on a device profile (torch-free), here, over SSH or emulated."""
    from edgekit.bench.run import bench_bundles, markdown_table
    from edgekit.runtime.bundle import read_manifest

    if runs is not None and runs < 1:
        raise EdgekitError("--runs must be at least 1")
    if batch_size and any(b < 1 or b > 4096 for b in batch_size):
        raise EdgekitError(
            f"--batch-size {min(batch_size) if min(batch_size) < 1 else max(batch_size)} must be from 1 to 4096"
        )
    if not (math.isfinite(run_timeout) and run_timeout > 0) or connect_timeout < 1:
        raise EdgekitError("--run-timeout and --connect-timeout must be positive numbers of seconds")
    if emulate and host:
        raise EdgekitError("--emulate and --host contradict each other; give one")
    if emulate:
        from edgekit.emulate.run import bench_emulated

        if data is not None:
            raise EdgekitError(
                "--data cannot be combined with --emulate yet; bench on synthetic inputs, or eval with --data"
            )
        for bundle in bundles:
            read_manifest(bundle)
        extra = [
            *(["--runs", str(runs)] if runs else []),
            *[a for b in (batch_size or []) for a in ("--batch-size", str(b))],
        ]
        document = bench_emulated(list(bundles), device, extra_args=extra, timeout=run_timeout)
    elif host:
        document = _bench_over_ssh(
            bundles,
            device,
            host,
            port,
            identity,
            ssh_config,
            ssh_option,
            remote_edgekit,
            connect_timeout,
            run_timeout,
            runs,
            batch_size,
            data,
        )
    else:
        items = _bench_items(bundles[0], data, text_column or "text", label_column or "label") if data else None
        document = bench_bundles(list(bundles), device, items=items, runs=runs, batch_sizes=batch_size)
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


def devices_list() -> None:
    """List the device profiles that ship with edgekit."""
    from edgekit.bench.profiles import list_profiles, load_profile

    for name in list_profiles():
        profile = load_profile(name)
        print(f"{name:8s} {profile.get('description', '')}")


def devices_show(name: Annotated[str, typer.Argument(help="Profile name or .yaml file.")]) -> None:
    """Show every setting of a device profile."""
    import yaml

    from edgekit.bench.profiles import load_profile

    profile = load_profile(name)
    print(yaml.safe_dump({k: v for k, v in profile.items() if not k.startswith("_")}, sort_keys=False).rstrip())


def _train_overrides(section: str, epochs, lr, batch_size) -> list[str]:
    values = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    return [f"{section}.{k}={v}" for k, v in values.items() if v is not None]


def _print_model_summary(meta: dict, out: Path) -> None:
    m = meta["metrics"]
    config = meta["config"]
    name = f"{config['strategy']} student" if "strategy" in config else config.get("model", "model")
    seq2seq = "accuracy" not in m
    key, key2, unit = ("bleu", "rouge_l", "BLEU") if seq2seq else ("accuracy", "macro_f1", "accuracy (%)")
    scale = 1 if seq2seq else 100
    links = meta.get("links") or []
    if len(links) > 1 or meta.get("baseline_metrics"):
        rows = [("teacher", meta["teacher"]["parameters"], meta["teacher"][key], None)]
        rows += [(f"link {r['name']}", r["parameters"], r[key], r.get(key2)) for r in links]
        if meta.get("baseline_metrics"):
            b = meta["baseline_metrics"]
            rows.append(("labels-only baseline", meta["parameters"], b[key], b[key2]))
        print(f"{'model':<24} {'parameters (M)':>14} {unit:>12} {'ROUGE-L' if seq2seq else 'macro F1':>9}")
        for label, params, value, second in rows:
            print(
                f"{label:<24} {params / 1e6:14.3f} {scale * value:12.2f} {'' if second is None else f'{second:9.3f}':>9}"
            )
    if "teacher_weights" in m:
        kind = "learned" if m.get("teacher_weights_learned") else "fixed"
        print(f"teacher weights ({kind}): " + ", ".join(f"{w:.3f}" for w in m["teacher_weights"]))
    if "kd_gain_points" in m:
        print(f"KD gain over labels only: {m['kd_gain_points']:+.2f} accuracy points")
    if "kd_gain_bleu" in m:
        print(f"KD gain over labels only: {m['kd_gain_bleu']:+.2f} BLEU")
    if meta.get("merge"):
        g = meta["merge"]
        print(
            f"adapters merged to full precision: max |logit diff| {g['max_abs_logit_diff']:.2e}, label agreement "
            f"{g['label_agreement']:.2%} vs the {g['against']} model (its accuracy {g['adapted_accuracy']:.2%})"
        )
    if seq2seq:
        print(
            f"{name}: BLEU {m['bleu']:.2f}, ROUGE-L {m['rouge_l']:.3f}, exact match {m['exact_match']:.2%} on "
            f"{m['split']} ({m['examples']} examples), {meta['parameters'] / 1e6:.3f} M parameters; wrote {out}"
        )
        return
    _print_metrics(m)
    lat = m.get("latency_ms") or {}
    print(
        f"{name}: accuracy {m['accuracy']:.2%} on {m['split']} ({m['examples']} examples), "
        f"macro F1 {m['macro_f1']:.3f}, {meta['parameters'] / 1e6:.3f} M parameters, "
        f"p50 {lat.get('p50', float('nan')):.3f} ms (PyTorch CPU, batch 1); wrote {out}"
    )


def _print_metrics(metrics: dict) -> None:
    if "bleu" in metrics:
        print(
            f"BLEU {metrics['bleu']:.2f} (0-100), ROUGE-L F1 {metrics['rouge_l']:.3f}, exact match "
            f"{metrics['exact_match']:.2%} on {metrics['examples']} examples"
        )
        for sample in metrics.get("samples", [])[:3]:
            print(f"  {sample['source']!r} -> {sample['prediction']!r} (reference {sample['reference']!r})")
        return
    print(f"accuracy {metrics['accuracy']:.2%}, macro F1 {metrics['macro_f1']:.3f} on {metrics['examples']} examples")
    width = max(len(n) for n in metrics["per_class"])
    print(f"{'label'.ljust(width)}  precision  recall   f1      support")
    for name, row in metrics["per_class"].items():
        print(
            f"{name.ljust(width)}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:6.3f}  {row['support']:7d}"
        )


def _bench_over_ssh(
    bundles,
    device,
    host,
    port,
    identity,
    ssh_config,
    ssh_option,
    remote_edgekit,
    connect_timeout,
    run_timeout,
    runs,
    batch_size,
    data,
) -> dict:
    from edgekit.bench.ssh import bench_remote
    from edgekit.runtime.bundle import read_manifest

    if data is not None:
        raise EdgekitError(
            "--data cannot be combined with --host; copy the data file to the device and run 'edgekit bench' there"
        )
    for bundle in bundles:
        read_manifest(bundle)
    extra = [
        *(["--runs", str(runs)] if runs else []),
        *[a for b in (batch_size or []) for a in ("--batch-size", str(b))],
    ]
    target = _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout)
    print(f"bench: {len(bundles)} bundle(s) on {host} ({device})", file=sys.stderr)
    return bench_remote(list(bundles), device, target, extra_args=extra, run_timeout=run_timeout)


def _bench_items(bundle: Path, data: Path, text_column: str, label_column: str) -> list:
    from edgekit.data.images import read_image_folder
    from edgekit.data.tables import read_table
    from edgekit.runtime.bundle import read_manifest
    from edgekit.tasks import task_spec

    images = task_spec(read_manifest(bundle)["task"]).modality == "image"
    items = read_image_folder(data)[0] if images else read_table(data, text_column, label_column)[0]
    return items[:2000]


def _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout):
    from edgekit.bench.ssh import SshTarget

    for path, option in ((identity, "--identity"), (ssh_config, "--ssh-config")):
        if path is not None and not path.is_file():
            raise EdgekitError(f"{option} {path} does not exist")
    return SshTarget(
        host,
        port=port,
        identity=identity,
        config=ssh_config,
        options=list(ssh_option or []),
        connect_timeout=connect_timeout,
        remote_edgekit=remote_edgekit,
    )


def devices_emulate(
    name: Annotated[str, typer.Argument(help="Device profile to emulate: rpi4 (Cortex-A72) or rpi5 (Cortex-A76).")],
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build the root filesystem again even if it is cached.")
    ] = False,
) -> None:
    """Build (once, cached) an emulated aarch64 device: Debian arm64 with edgekit's core install, run under QEMU."""
    from edgekit.bench.profiles import load_profile
    from edgekit.emulate.rootfs import build, install_edgekit
    from edgekit.emulate.target import EmulatedTarget, emulated_cpu
    from edgekit.targets import target_environment

    profile = load_profile(name)
    cpu = emulated_cpu(profile)
    folder = build(rebuild=rebuild)
    install_edgekit(folder)
    target = EmulatedTarget(profile, folder)
    with target.session() as session:
        where = target_environment(session)
    size = sum(p.stat().st_size for p in (folder / "root").rglob("*") if p.is_file() and not p.is_symlink())
    print(
        f"emulated {profile['name']}: {where['machine']}, {cpu} (ISA flags: {', '.join(where['isa_flags']) or 'none'}), "
        f"onnxruntime {where['onnxruntime']}, edgekit {where['edgekit']}, Python {where['python']}; "
        f"root {size / 1e6:.0f} MB in {folder}"
    )
    print(
        f"use it: edgekit bench BUNDLE --device {profile['name']} --emulate; "
        f"edgekit eval BUNDLE --data FILE --device {profile['name']} --emulate"
    )


def devices_here(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """This machine as benchmarks record it: machine type, CPU model, int8-relevant ISA flags, onnxruntime."""
    from edgekit.bench.env import here

    info = here()
    if as_json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        print(f"{key:12s} {', '.join(value) if isinstance(value, list) else value}")


def validate_bundle(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (its manifest and model files).")],
    inputs: Annotated[Path, typer.Argument(help="INPUTS.npz: arrays named <batch>__<input name>.")],
    outputs: Annotated[Path, typer.Argument(help="OUTPUTS.npz to write: the logits of each batch.")],
) -> None:
    """Run a bundle on saved inputs and save its logits (how an export checks parity on a target)."""
    from edgekit.runtime.validate import _main

    _main(str(bundle), str(inputs), str(outputs))
