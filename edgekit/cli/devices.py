"""edgekit devices: list and show profiles, describe this machine, build the emulated device."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def devices_list() -> None:
    """List the device profiles that ship with edgekit."""
    from edgekit.bench.profiles import list_profiles, load_profile

    for name in list_profiles():
        profile = load_profile(name)
        print(f"{name:8s} {profile.description}")


def devices_show(name: Annotated[str, typer.Argument(help="Profile name or .yaml file.")]) -> None:
    """Show every setting of a device profile."""
    import yaml

    from edgekit.bench.profiles import load_profile

    profile = load_profile(name)
    print(yaml.safe_dump(profile.to_json(), sort_keys=False).rstrip())


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
        f"emulated {profile.name}: {where['machine']}, {cpu} (ISA flags: {', '.join(where['isa_flags']) or 'none'}), "
        f"onnxruntime {where['onnxruntime']}, edgekit {where['edgekit']}, Python {where['python']}; "
        f"root {size / 1e6:.0f} MB in {folder}"
    )
    print(
        f"use it: edgekit bench BUNDLE --device {profile.name} --emulate; "
        f"edgekit eval BUNDLE --data FILE --device {profile.name} --emulate"
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
