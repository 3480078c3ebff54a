"""The Typer app: one function per command (in training, distill, export, bench, shipping and devices),
each a thin layer over edgekit.stages."""

from __future__ import annotations

import typer

from edgekit.cli import bench, distill, export, shipping, training
from edgekit.cli import devices as device_commands


def build_app():
    app = typer.Typer(
        name="edgekit",
        help="Take a large model and ship a small, fast one to an edge device, with proof of what was gained and lost.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.command("run")(training.run)
    app.command("distill")(distill.distill)
    app.command("finetune")(training.finetune)
    app.command("prune")(training.prune)
    app.command("export")(export.export)
    app.command("eval")(shipping.evaluate)
    app.command("bench")(bench.bench)
    app.command("report")(shipping.report)
    app.command("validate-bundle", hidden=True)(shipping.validate_bundle)
    devices = typer.Typer(
        help="List and show device profiles, describe this machine, build an emulated device.", no_args_is_help=True
    )
    devices.command("list")(device_commands.devices_list)
    devices.command("show")(device_commands.devices_show)
    devices.command("here")(device_commands.devices_here)
    devices.command("emulate")(device_commands.devices_emulate)
    app.add_typer(devices, name="devices")
    app.callback(invoke_without_command=True)(training.root)
    return typer.main.get_command(app)
