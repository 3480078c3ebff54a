"""Entry point: run the Typer app and turn user errors into one clear line and an exit code."""

from __future__ import annotations

import errno
import os
import signal
import sys

from edgekit.registry import EXTRAS, MissingExtra, require_extra

# What each command needs beyond the core install (a Raspberry Pi has only the core): the extra to
# install (its modules: edgekit.registry.EXTRAS), checked before the command starts.
COMMAND_EXTRAS = {
    "run": "train",
    "distill": "train",
    "finetune": "train",
    "prune": "train",
    "export": "train",
    "report": "report",
}
USER_ERRNOS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EISDIR: "a folder is in the way",
    errno.ENAMETOOLONG: "a file name is too long",
    errno.EDQUOT: "disk quota exceeded",
}
ERRNO_FIX = {
    errno.ENOSPC: "free some space or write elsewhere (--out)",
    errno.EROFS: "write elsewhere (--out)",
    errno.EACCES: "choose a folder you can write (--out, --json)",
    errno.EISDIR: "give a file path, not a folder",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EDQUOT: "free some space or write elsewhere (--out)",
}
MODULE_HINTS = {
    "sklearn": "scikit-learn (pip install scikit-learn, or pip install 'edgekit[train]')",
    "matplotlib": "matplotlib (pip install 'edgekit[report]')",
}


def _command_of(args: list[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def missing_extra(args: list[str]) -> str | None:
    """The one-line error for a command whose extra is not installed (None when it is, or for --help)."""
    command = _command_of(args)
    extra = COMMAND_EXTRAS.get(command)
    if extra is None or "--help" in args or "-h" in args:
        return None
    try:
        require_extra(extra, f"edgekit {command}")
    except MissingExtra as exc:
        return str(exc)
    return None


def _missing_module(name: str, args: list[str]) -> str:
    root = name.split(".")[0]
    command = _command_of(args) or "this command"
    if root in MODULE_HINTS:
        return f"edgekit {command} needs {MODULE_HINTS[root]}"
    extra = next((e for e, modules in EXTRAS.items() if root in modules), None)
    if extra:
        return f"edgekit {command} needs {root}, which the core install lacks: pip install 'edgekit[{extra}]'"
    return f"edgekit {command} needs the Python package {root!r}, which is not installed: pip install {root}"


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that atomic folders and temp files are cleaned up."""


def _terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    # Hugging Face's own bars (weight loading, shard writing) would interleave with edgekit's
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from edgekit.cli.app import build_app

    args = argv if argv is not None else sys.argv[1:]
    problem = missing_extra(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    _quiet_unless_main()
    command = build_app()
    signal.signal(signal.SIGTERM, _terminated)
    from edgekit.artifacts import command_scratch, release_locks

    try:
        with command_scratch():
            return _run(command, args)
    finally:
        release_locks()


def _quiet_unless_main() -> None:
    """Under accelerate launch every process runs the command; the main one alone prints its output,
    progress and messages (errors still reach stderr from each)."""
    from edgekit.processes import is_main

    if is_main():
        return
    from edgekit import log

    os.environ["TQDM_DISABLE"] = "1"
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    log.configure(-1)


def _run(command, args: list[str]) -> int:
    try:
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - older Typer uses click itself
        from click import exceptions as click

    import typer

    from edgekit.errors import EdgekitError

    try:
        result = command.main(args=args, prog_name="edgekit", standalone_mode=False)
        if result == 130:  # click turned Ctrl-C outside a command body into a return value
            raise KeyboardInterrupt
    except Terminated:
        print("error: terminated (SIGTERM); finished stages are kept, re-run the command to continue", file=sys.stderr)
        return 143
    except typer.Abort:
        print("error: interrupted; finished stages are kept, re-run the command to continue", file=sys.stderr)
        return 130
    except click.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        return 2
    except click.UsageError as exc:
        hint = (
            f" (see 'edgekit {exc.ctx.info_name} --help')"
            if exc.ctx and exc.ctx.info_name != "edgekit"
            else " (see 'edgekit --help')"
        )
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
    except ModuleNotFoundError as exc:
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        print(f"error: {_missing_module(exc.name or str(exc), args)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; lower the batch size (--batch-size) or use a smaller model", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk, not edgekit: full, read-only, a folder where a file goes
        if os.environ.get("EDGEKIT_DEBUG") or exc.errno not in USER_ERRNOS:
            if os.environ.get("EDGEKIT_DEBUG"):
                raise
            return _internal(exc)
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"error: {USER_ERRNOS[exc.errno]}{where}; {ERRNO_FIX[exc.errno]}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        return _internal(exc)
    return 0


def _internal(exc: BaseException) -> int:
    print(
        f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
        "re-run with EDGEKIT_DEBUG=1 for the traceback and report it",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
