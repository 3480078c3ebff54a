"""``edgekit bench``: the checked options and load scenario, the runner chosen (here, SSH, emulated), the
table and the verdicts."""

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
    _ssh_target,
)
from edgekit.cli.options import (
    LabelColOpt,
    TextColOpt,
)
from edgekit.errors import EdgekitError


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


def _bench_items(bundle: Path, data: Path, text_column: str, label_column: str) -> list:
    from edgekit.data.images import read_image_folder
    from edgekit.data.tables import read_table
    from edgekit.records import read_manifest
    from edgekit.tasks import task_spec

    images = task_spec(read_manifest(bundle).task).modality == "image"
    items = read_image_folder(data)[0] if images else read_table(data, text_column, label_column)[0]
    return items[:2000]
