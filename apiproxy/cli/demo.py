"""`apiproxy demo` (placeholder until the demo lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
