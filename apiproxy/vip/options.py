"""The VIP's settings from their raw option values, validated once: shared by `apiproxy run` and the Go
sidecar's front end (`vip.sidecar`), which must not depend on the CLI package. The sidecar reads its
address as Go does (`sidecar.parse_address`); `apiproxy run` asks more of it (`parse_vip`).
"""

from __future__ import annotations

import ipaddress
import re

from ..config import ConfigError, IPAddress, VIPConfig, parse_duration, parse_ip

_INTERFACE_NAME = re.compile(r"[^/\s:]{1,15}")


def _not_a_vip(address: IPAddress) -> str | None:
    """Why `address` cannot be a node's VIP, or None. Reserved space stays allowed: Gardener's IPv4 VIPs
    are 240.x.y.z. So does IPv4 link-local (NodeLocal DNSCache keeps 169.254.20.10 on a dummy link the same
    way); IPv6 link-local does not, as a listener cannot bind it without a zone and nothing routes to it."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_multicast:
        return "a multicast address"
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return f"an IPv4-mapped address (give {address.ipv4_mapped} itself)"
        if address.is_link_local:
            return "an IPv6 link-local address"
        if address.scope_id is not None:
            return f"an address with a zone (%{address.scope_id})"
    return None


def parse_vip(option: str, text: str) -> IPAddress:
    """`apiproxy run --ip-address`: a unicast address this node can own and listen on."""
    address = parse_ip(option, text)
    kind = _not_a_vip(address)
    if kind is not None:
        raise ConfigError(option, text, f"a unicast address for the VIP, not {kind}")
    return address


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
