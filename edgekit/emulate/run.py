"""``edgekit bench --emulate`` and ``edgekit eval --emulate``: the generic target runners
(:mod:`edgekit.targets`) on an emulated device, labelled as emulated and never a valid latency."""

from __future__ import annotations

from typing import Any

from edgekit import log
from edgekit.emulate.target import not_valid_reason, target_for
from edgekit.targets import bench_on, eval_on, target_environment


def bench_emulated(bundles, device: str, *, extra_args=(), timeout: float = 3600) -> dict[str, Any]:
    """``edgekit bench`` on the emulated device: the device's JSON plus ``emulated: true``, never valid."""
    target = target_for(device)
    log.info(f"bench: {len(bundles)} bundle(s) on {target.name}")
    with target.session() as session:
        document = bench_on(session, bundles, target.profile, extra_args=extra_args, timeout=timeout, emulated=True)
        where = {**target.describe(), **target_environment(session)}
    reason = not_valid_reason(target)
    for result in document.get("results", []):
        result["emulated"] = True
        result["valid"] = False
        result.setdefault("invalid_reasons", []).append(reason)
        result["measured_on"] = where
    document.update(emulated=True, valid=False, measured_on=where)
    return document


def eval_emulated(bundle, split, task: str, label_names: list[str], device: str) -> dict[str, Any]:
    """``edgekit eval`` of the bundle on the emulated device, on exactly ``split``'s examples."""
    target = target_for(device)
    log.info(f"eval: {bundle} on {target.name}")
    with target.session() as session:
        metrics = eval_on(session, bundle, split, task, label_names)
        metrics["measured_on"] = {**target.describe(), **target_environment(session)}
    metrics["emulated"] = True
    return metrics


class Emulated:
    """The ``emulated`` bench runner: :func:`bench_emulated` and :func:`eval_emulated` for a request."""

    def bench(self, bundles, request) -> dict[str, Any]:
        from edgekit.records import read_manifest

        for bundle in bundles:
            read_manifest(bundle)  # a bad bundle fails before the emulated device starts
        return bench_emulated(
            list(bundles), request.device, extra_args=request.bench_args(), timeout=request.run_timeout
        )

    def evaluate(self, bundle, split, task: str, label_names: list[str], request) -> dict[str, Any]:
        return eval_emulated(bundle, split, task, label_names, request.device)


EMULATED = Emulated()
