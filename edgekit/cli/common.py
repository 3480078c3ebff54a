"""Options and helpers shared by the command modules (SSH options, training flags, summaries)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.errors import EdgekitError

EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", help="Training epochs.")]


LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: by model family).")]


BatchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        help="Training batch size per process (default: the largest of 64, 32, 16, 8 giving the run 150+ steps).",
    ),
]


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


def _print_json(path: Optional[Path], document) -> None:
    if path is not None:
        from edgekit.artifacts import write_json_atomic

        write_json_atomic(path, document)
        print(f"wrote {path}", file=sys.stderr)


def _csv(text: str, kind, flag: str) -> list:
    try:
        return [kind(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise EdgekitError(
            f"{flag} {text!r}: give comma-separated {'whole numbers' if kind is int else 'numbers'}, e.g. "
            f"{'6,3' if kind is int else '0.7,0.3'}"
        ) from None


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


def _train_overrides(section: str, epochs, lr, batch_size) -> list[str]:
    values = {"epochs": epochs, "lr": lr, "batch_size": batch_size}
    return [f"{section}.{k}={v}" for k, v in values.items() if v is not None]


def _print_model_summary(meta, out: Path) -> None:
    """``meta``: the stage's :class:`edgekit.records.StageMeta`."""
    m, config, details = meta.metrics, meta.config, meta.details
    name = f"{config['strategy']} student" if "strategy" in config else config.get("model", "model")
    seq2seq = "accuracy" not in m
    key, key2, unit = ("bleu", "rouge_l", "BLEU") if seq2seq else ("accuracy", "macro_f1", "accuracy (%)")
    scale = 1 if seq2seq else 100
    links = details.get("links") or []
    if len(links) > 1 or details.get("baseline_metrics"):
        rows = [("teacher", details["teacher"]["parameters"], details["teacher"][key], None)]
        rows += [(f"link {r['name']}", r["parameters"], r[key], r.get(key2)) for r in links]
        if details.get("baseline_metrics"):
            b = details["baseline_metrics"]
            rows.append(("labels-only baseline", meta.parameters, b[key], b[key2]))
        print(f"{'model':<24} {'parameters (M)':>14} {unit:>12} {'ROUGE-L' if seq2seq else 'macro F1':>9}")
        for label, params, value, second in rows:
            print(
                f"{label:<24} {params / 1e6:14.3f} {scale * value:12.2f} {'' if second is None else f'{second:9.3f}':>9}"
            )
    if "teacher_weights" in m:
        fit = m.get("teacher_weights_fit")
        kind = "learned" if m.get("teacher_weights_learned") else "fixed"
        where = (
            f", fitted on the {fit['fitted_on']}: {fit['examples']} examples, {fit['disagreements']} disputed"
            if fit
            else ""
        )
        print(f"teacher weights ({kind}{where}): " + ", ".join(f"{w:.3f}" for w in m["teacher_weights"]))
    if m.get("unlabeled_examples"):
        print(f"transfer set: {m['transfer_examples']} examples, {m['unlabeled_examples']} of them unlabeled")
    if "kd_gain_points" in m:
        print(f"KD gain over labels only: {m['kd_gain_points']:+.2f} accuracy points")
    if "kd_gain_bleu" in m:
        print(f"KD gain over labels only: {m['kd_gain_bleu']:+.2f} BLEU")
    if details.get("merge"):
        g = details["merge"]
        print(
            f"adapters merged to full precision: max |logit diff| {g['max_abs_logit_diff']:.2e}, label agreement "
            f"{g['label_agreement']:.2%} vs the {g['against']} model (its accuracy {g['adapted_accuracy']:.2%})"
        )
    if seq2seq:
        print(
            f"{name}: BLEU {m['bleu']:.2f}, ROUGE-L {m['rouge_l']:.3f}, exact match {m['exact_match']:.2%} on "
            f"{m['split']} ({m['examples']} examples), {meta.parameters / 1e6:.3f} M parameters; wrote {out}"
        )
        return
    _print_metrics(m)
    lat = m.get("latency_ms") or {}
    print(
        f"{name}: accuracy {m['accuracy']:.2%} on {m['split']} ({m['examples']} examples), "
        f"macro F1 {m['macro_f1']:.3f}, {meta.parameters / 1e6:.3f} M parameters, "
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


def _ssh_target(host, port, identity, ssh_config, ssh_option, remote_edgekit, connect_timeout):
    """The SSH target the shared --host options name (the same for export, eval and bench), or None
    without --host."""
    from edgekit.bench.ssh import SshTarget

    if not host:
        return None
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
