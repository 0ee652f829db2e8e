"""The VIP's settings from their raw option values, validated once: shared by `apiproxy run` and the Go
sidecar's front end (`vip.sidecar`), which must not depend on the CLI package.
"""

from __future__ import annotations

import re

from ..config import ConfigError, IPAddress, VIPConfig, parse_duration

_INTERFACE_NAME = re.compile(r"[^/\s:]{1,15}")


def build_vip(
    vip: IPAddress, interface: str, sync_interval: str, cleanup: bool, setup_iptables: bool, port: int
) -> VIPConfig:
    if not _INTERFACE_NAME.fullmatch(interface) or interface in (".", ".."):
        raise ConfigError(
            "--interface", interface, "a Linux interface name (1-15 characters, no '/', ':' or spaces)"
        )
    return VIPConfig(
        address=vip,
        interface=interface,
        sync_interval=parse_duration("--sync-interval", sync_interval),
        cleanup=cleanup,
        setup_iptables=setup_iptables,
        port=port,
    )
