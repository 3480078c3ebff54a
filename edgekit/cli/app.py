"""The Typer app: one function per command, each a thin layer over edgekit.stages."""

from __future__ import annotations

import typer

from edgekit.cli import commands


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
    app.command("run")(commands.run)
    app.command("distill")(commands.distill)
    app.command("finetune")(commands.finetune)
    app.command("prune")(commands.prune)
    app.command("export")(commands.export)
    app.command("eval")(commands.evaluate)
    app.command("bench")(commands.bench)
    app.command("report")(commands.report)
    app.command("validate-bundle", hidden=True)(commands.validate_bundle)
    devices = typer.Typer(
        help="List and show device profiles, describe this machine, build an emulated device.", no_args_is_help=True
    )
    devices.command("list")(commands.devices_list)
    devices.command("show")(commands.devices_show)
    devices.command("here")(commands.devices_here)
    devices.command("emulate")(commands.devices_emulate)
    app.add_typer(devices, name="devices")
    app.callback(invoke_without_command=True)(commands.root)
    return typer.main.get_command(app)
