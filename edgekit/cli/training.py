"""Commands that train: run (a whole recipe), finetune and prune (distill is in :mod:`edgekit.cli.distill`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit import registry
from edgekit.cli.common import (
    BatchOpt,
    EpochsOpt,
    LrOpt,
    ResumeOpt,
    _check_out,
    _csv,
    _print_model_summary,
    _train_overrides,
)
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
    from edgekit.processes import is_main

    log.configure(-1 if quiet or not is_main() else min(verbose, 1))  # (other processes of a launch stay quiet)
    if version:
        from edgekit import __version__

        print(f"edgekit {__version__}")
        raise typer.Exit(0)


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
    before = meta.details.get("metrics_before")
    if before and "accuracy" in before:
        nf4 = meta.details.get("metrics_nf4_base")
        print(
            f"accuracy before {meta.stage}: {before['accuracy']:.2%}"
            + (f", NF4 base before training: {nf4['accuracy']:.2%}" if nf4 else "")
            + f", after (merged): {meta.metrics['accuracy']:.2%}"
        )


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
    keep_tokens: Annotated[
        int,
        typer.Option(
            "--keep-tokens",
            help="--method vocab: also keep the first N ids of the tokenizer's vocabulary (its most common tokens, for texts the training data does not cover).",
        ),
    ] = 0,
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
        keep_tokens=keep_tokens,
        force=force,
        resume=resume,
    )
    m, before = meta.metrics, meta.details
    from edgekit.metrics import METRIC_NAMES

    key = m.get("score_metric", "accuracy")  # the task's score: accuracy (a fraction) or BLEU (points)
    title, scale = ("accuracy (%)", 100) if key == "accuracy" else (METRIC_NAMES.get(key, key), 1)
    print(f"{'':<22} {'parameters (M)':>14} {'non-zero (M)':>12} {title:>12}")
    print(
        f"{'before':<22} {before['parameters_before'] / 1e6:14.3f} {before['nonzero_parameters_before'] / 1e6:12.3f} "
        f"{scale * m[key + '_before']:12.2f}"
    )
    print(
        f"{'pruned':<22} {meta.parameters / 1e6:14.3f} {m['nonzero_parameters'] / 1e6:12.3f} "
        f"{scale * m[key + '_pruned']:12.2f}"
    )
    if recover_epochs:
        print(
            f"{'recovered (' + recover + ')':<22} {meta.parameters / 1e6:14.3f} {m['nonzero_parameters'] / 1e6:12.3f} "
            f"{scale * m[key]:12.2f}"
        )
    if "vocab_before" in m:
        check = m.get("check") or {}
        proof = (
            f"; on {check['texts']} validation texts {check['pruned_token_share']:.2%} of tokens were pruned "
            f"([UNK] {check['unk_share_before']:.2%} -> {check['unk_share_after']:.2%}), "
            f"{check['kept_tokens_same_vector']}/{check['kept_tokens_checked']} kept tokens keep their vector, "
            f"max |logit diff| {check.get('max_abs_logit_diff_all_kept', float('nan')):.2g} on the "
            f"{check['examples_all_kept']} with every token kept"
            if check
            else ""
        )
        print(
            f"vocab: {m['vocab_before']} -> {m['vocab_after']} tokens, {m['parameters_removed'] / 1e6:.2f} M "
            f"parameters and {m['bytes_saved'] / 1e6:.1f} MB (fp32) removed{proof}; wrote {out}"
        )
        return
    removed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in (m.get("removed") or {}).items())
    latency = f"; p50 {m['latency_ms']['p50']:.3f} ms (PyTorch CPU, batch 1)" if "latency_ms" in m else ""
    print(
        f"{method} {amount:.0%}: "
        + (f"removed {removed}; " if removed else "")
        + f"{m['sparsity']:.1%} of Linear/Conv weights are zero{latency}; wrote {out}"
    )
