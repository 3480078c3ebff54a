"""An emulated aarch64 device: a Debian arm64 root with edgekit's core install, run under qemu-user.

``edgekit devices emulate rpi4`` builds it once (cached under ``$EDGEKIT_CACHE_DIR/emulate``);
``edgekit bench/eval --emulate`` and the parity check of an export for another instruction set run
there, on the profile's CPU model. Emulated latency is never a device's; labels and accuracy are exact.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError


def emulated_cpu(profile: dict[str, Any]) -> str:
    """The QEMU CPU model a device profile is emulated with (its ``emulate: {cpu: ...}``)."""
    from edgekit.bench.profiles import list_profiles, load_profile
    from edgekit.emulate.target import check_cpu

    spec = profile.get("emulate")
    if not spec:
        emulable = [n for n in list_profiles() if load_profile(n).get("emulate")]
        raise EdgekitError(f"device profile {profile['name']} cannot be emulated (it has no 'emulate' section); "
                           f"emulated targets: {', '.join(emulable)}")
    cpu = spec.get("cpu") if isinstance(spec, dict) else None
    check_cpu(str(cpu), f"device profile {profile['name']}")
    return str(cpu)


def target_for(device: str):
    """The ready emulated target of a device profile name or file (one clear error when it is not)."""
    from edgekit.bench.profiles import load_profile
    from edgekit.emulate.target import EmulatedTarget

    return EmulatedTarget(load_profile(device))


def not_valid_reason(target) -> str:
    return (f"emulated: {target.cpu} under QEMU on this {target.host['machine']} host; the latency is not "
            f"the {target.profile['name']}'s (labels and accuracy are exact)")


def bench_emulated(bundles, device: str, *, extra_args=(), timeout: float = 3600) -> dict[str, Any]:
    """``edgekit bench`` on the emulated device: the device's JSON plus ``emulated: true``, never valid."""
    import sys

    from edgekit.targets import bench_on, target_environment

    target = target_for(device)
    print(f"bench: {len(bundles)} bundle(s) on {target.name}", file=sys.stderr, flush=True)
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
    import sys

    from edgekit.targets import eval_on, target_environment

    target = target_for(device)
    print(f"eval: {bundle} on {target.name}", file=sys.stderr, flush=True)
    with target.session() as session:
        metrics = eval_on(session, bundle, split, task, label_names)
        metrics["measured_on"] = {**target.describe(), **target_environment(session)}
    metrics["emulated"] = True
    return metrics
