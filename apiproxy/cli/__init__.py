"""The `apiproxy` command line (typer). Each sub-command lives in a module of its own here.

Errors in options print one line (`apiproxy run: --upstream: expected HOST:PORT, got 'x'`) and exit 2,
never a traceback; `main()` turns typer's own usage errors (unknown option, bad count) into that form too.
"""

from __future__ import annotations

import sys

import typer

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


@app.callback()
def _root() -> None:
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
    try:
        result = command.main(args=argv, prog_name="apiproxy", standalone_mode=False)
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
