"""Entry point: run the Typer app and turn user errors into one clear line and an exit code."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Hugging Face's own bars (weight loading, shard writing) would interleave with edgekit's
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:  # recent Typer vendors its own copy of click
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - older Typer uses click itself
        from click import exceptions as click

    import typer

    from edgekit.cli.app import build_app
    from edgekit.errors import EdgekitError

    command = build_app()
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name="edgekit", standalone_mode=False)
    except click.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        return 2
    except click.UsageError as exc:
        hint = f" (see 'edgekit {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.info_name != "edgekit" else " (see 'edgekit --help')"
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code or 1
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; finished stages are kept, re-run the command to continue", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; lower the batch size (--batch-size) or use a smaller model", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        print(f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
              "re-run with EDGEKIT_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
