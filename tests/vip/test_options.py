"""`apiproxy run --ip-address`: a VIP must be a unicast address the node can own (issue 18, item 6). The
Go-compatible sidecar reads its address as Go does instead (test_sidecar_flags, test_netns_sidecar)."""

from __future__ import annotations

import ipaddress

import pytest

from apiproxy.config import ConfigError
from apiproxy.vip.options import parse_vip


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("127.0.0.1", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("::ffff:10.96.0.9", "an IPv4-mapped address (give 10.96.0.9 itself)"),
        ("fe80::1", "an IPv6 link-local address"),
        ("fe80::1%lo", "an IPv6 link-local address"),
        ("fd00::1%eth0", "an address with a zone (%eth0)"),
    ],
)
def test_refused_with_one_line_naming_flag_value_and_kind(text: str, kind: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_vip("--ip-address", text)
    assert (
        str(raised.value) == f"--ip-address: expected a unicast address for the VIP, not {kind}, got {text!r}"
    )


@pytest.mark.parametrize(
    # Gardener's VIPs (240/4 is reserved space, and still the VIP), the README's old example, NodeLocal
    # DNSCache's kind of link-local VIP, an IPv6 one.
    "text",
    ["240.168.102.23", "10.96.0.2", "169.254.20.10", "64:ff9b:1::f0a8:6617", "fd00::2"],
)
def test_accepted(text: str) -> None:
    assert parse_vip("--ip-address", text) == ipaddress.ip_address(text)


def test_apiproxy_run_uses_it() -> None:
    from apiproxy.cli.run import build_listener

    with pytest.raises(ConfigError, match="not a loopback address"):
        build_listener(None, "127.0.0.1", "10000")
