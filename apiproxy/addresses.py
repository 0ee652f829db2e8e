"""Writing socket addresses for people: `host:port`, IPv6 in brackets (`[fd00::1]:443`), as URLs, Envoy
and every log reader expect. The one place the project formats an address.
"""

from __future__ import annotations

from typing import Any


def bracket(host: str) -> str:
    """`fd00::1` -> `[fd00::1]`; names and IPv4 addresses unchanged."""
    return f"[{host}]" if ":" in host else host


def host_port(host: str, port: int) -> str:
    return f"{bracket(host)}:{port}"


def peer(address: tuple[Any, ...] | None) -> str:
    """A socket address as asyncio reports it (IPv6 ones have four fields), or `?` when unknown."""
    if not address:
        return "?"
    return host_port(str(address[0]), int(address[1]))
