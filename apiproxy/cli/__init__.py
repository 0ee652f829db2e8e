"""The `apiproxy` command line (typer). Each sub-command lives in a module of its own here; the options
they share, in `options`.

Errors in options print one line (`apiproxy: --upstream: expected HOST:PORT, got 'x'`) and exit 2, never a
traceback; `main()` turns typer's own usage errors (unknown option, bad count) into that form too.
`apiproxy` with no arguments prints the help and exits 0.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__
from ..config import ConfigError

app = typer.Typer(
    name="apiproxy",
    help="Carry a node's pod connections to the shoot API server through the seed gateway (HTTP CONNECT).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(requested: bool) -> None:
    if requested:
        print(f"apiproxy version {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            expose_value=False,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Gardener's apiserver-proxy in one process: VIP, CONNECT tunnels, metrics."""


def _register() -> None:
    from . import demo, run, tunnel

    run.register(app)
    demo.register(app)
    tunnel.register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Returns (and exits with) the process status."""
    _register()
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        # No arguments at all is a request for the help, not a usage error.
        result = command.main(
            args=args or ["--help"],
            prog_name="apiproxy",
            standalone_mode=False,
            # As the installed command, `run` replaces itself with a lean serving process once it has parsed
            # its options; called from Python (tests, preludes) it serves in this process.
            obj={"exec_to_serve": argv is None},
        )
    except typer.TyperException as error:
        context = getattr(error, "ctx", None)
        where = context.command_path if context is not None else "apiproxy"
        print(f"{where}: {error.format_message()}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    except ConfigError as error:
        print(f"apiproxy: {error}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
