"""Where ``edgekit bench`` and ``edgekit eval`` of bundles run: the ``runner`` registry entries.

A runner is an object with ``bench(bundles, request)`` (the bench JSON document) and
``evaluate(bundle, split, task, label_names, request)`` (the runtime's measured metrics, or None when
the bundle is evaluated in this process). Its entry says which CLI option selects it
(``selected_by``; the entry without one is the default) and whether it takes real inputs for the
bench (``bench_data``, else ``no_data_hint`` is the line a user reads). :func:`choose` is the one
place that picks a runner; the CLI builds a :class:`Request` from its options and calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import log, registry
from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class Request:
    """What a bench or an eval was asked to do, whichever runner does it."""

    device: str = "cpu"
    runs: int | None = None
    batch_sizes: tuple[int, ...] = ()
    items: list | None = None  # real inputs (a runner with bench_data only)
    run_timeout: float = 1800
    ssh: Any = None  # an edgekit.bench.ssh.SshTarget (the ssh runner)
    scenario: dict[str, Any] | None = None  # {name: server|offline, rate, duration, p99_bound_ms}
    compare: dict[str, Any] | None = None  # {rounds, min_effect}
    output_tokens: int | None = None  # tokens per seq2seq run (default: the profile's)

    def bench_args(self) -> list[str]:
        """The options a device-side ``edgekit bench`` is given for this request."""
        args = [
            *(["--runs", str(self.runs)] if self.runs else []),
            *[a for b in self.batch_sizes for a in ("--batch-size", str(b))],
            *(["--output-tokens", str(self.output_tokens)] if self.output_tokens else []),
        ]
        if self.compare:
            args += ["--compare", "--min-effect", repr(self.compare["min_effect"])]
            if self.compare.get("rounds"):
                args += ["--rounds", str(self.compare["rounds"])]
        if self.scenario:
            args += ["--scenario", self.scenario["name"]]
            if self.scenario["name"] == "server":
                args += ["--duration", repr(self.scenario["duration"])]
                for option, key in (("--rate", "rate"), ("--p99-bound", "p99_bound_ms")):
                    if self.scenario.get(key) is not None:
                        args += [option, repr(self.scenario[key])]
        return args


def choose(**given: Any) -> registry.Entry:
    """The runner entry the given options select (``host="pi"``, ``emulate=True``); the default one when
    none is given, one clear line when two contradict each other."""
    runners = registry.entries("runner")
    chosen = [e for e in runners if e.can("selected_by") and given.get(e.can("selected_by"))]
    if len(chosen) > 1:
        said = " and ".join(f"--{e.can('selected_by')}" for e in chosen)
        raise EdgekitError(f"{said} contradict each other; give one")
    if chosen:
        return chosen[0]
    return next(e for e in runners if not e.can("selected_by"))


def check_bench_data(entry: registry.Entry, data: Path | None) -> None:
    if data is not None and not entry.can("bench_data", False):
        raise EdgekitError(
            f"--data cannot be combined with --{entry.can('selected_by')}{entry.can('no_data_hint', '')}"
        )


class Local:
    """This machine: each bundle measured in a child process of its own."""

    def bench(self, bundles: list[Path], request: Request) -> dict[str, Any]:
        from edgekit.bench.run import bench_bundles

        return bench_bundles(
            list(bundles),
            request.device,
            items=request.items,
            runs=request.runs,
            batch_sizes=list(request.batch_sizes) or None,
            scenario=request.scenario,
            compare=request.compare,
            output_tokens=request.output_tokens,
        )

    def evaluate(self, bundle: Path, split, task: str, label_names: list[str], request: Request) -> None:
        return None  # evaluated here, by edgekit.stages.evaluate_bundle


class Ssh:
    """A device over SSH with edgekit's core installed there."""

    def bench(self, bundles: list[Path], request: Request) -> dict[str, Any]:
        from edgekit.bench.ssh import bench_remote
        from edgekit.records import read_manifest

        for bundle in bundles:
            read_manifest(bundle)  # a bad bundle fails before anything is copied
        log.info(f"bench: {len(bundles)} bundle(s) on {request.ssh.host} ({request.device})")
        return bench_remote(
            list(bundles), request.device, request.ssh, extra_args=request.bench_args(), run_timeout=request.run_timeout
        )

    def evaluate(self, bundle: Path, split, task: str, label_names: list[str], request: Request) -> dict[str, Any]:
        from edgekit.bench.ssh import ssh_session
        from edgekit.targets import eval_on, target_environment

        log.info(f"eval: {bundle} on {request.ssh.host}")
        with ssh_session(request.ssh) as session:
            measured = eval_on(session, bundle, split, task, label_names)
            measured["measured_on"] = {
                "where": "device",
                "emulated": False,
                "device": request.device,
                "host": request.ssh.host,
                **target_environment(session),
            }
        return measured


LOCAL = Local()
SSH = Ssh()
