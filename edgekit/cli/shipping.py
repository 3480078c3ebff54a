"""Commands that ship and measure: eval and report (and the hidden validate-bundle); export and bench
have modules of their own (:mod:`edgekit.cli.export`, :mod:`edgekit.cli.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

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
    TextColOpt,
)
from edgekit.errors import EdgekitError


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
