"""PROXY protocol v2 header bytes against the layout of haproxy's proxy-protocol.txt §2.2."""

from __future__ import annotations

import ipaddress
import struct

from apiproxy.proxy_protocol import SIGNATURE, encode_v2, encode_v2_local


def test_signature_is_the_specs_twelve_bytes() -> None:
    assert bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]) == SIGNATURE


def test_ipv4_tcp() -> None:
    header = encode_v2(("10.1.2.3", 51234), ("240.168.102.23", 443))
    assert header[:12] == SIGNATURE
    assert header[12] == 0x21  # version 2, PROXY command
    assert header[13] == 0x11  # AF_INET, STREAM
    assert struct.unpack("!H", header[14:16])[0] == 12 == len(header) - 16
    assert header[16:20] == ipaddress.IPv4Address("10.1.2.3").packed
    assert header[20:24] == ipaddress.IPv4Address("240.168.102.23").packed
    assert struct.unpack("!HH", header[24:28]) == (51234, 443)


def test_ipv6_tcp() -> None:
    header = encode_v2(("fd00::5", 40000), ("64:ff9b:1::f0a8:6617", 443))
    assert (header[12], header[13]) == (0x21, 0x21)  # PROXY, AF_INET6 STREAM
    assert struct.unpack("!H", header[14:16])[0] == 36 == len(header) - 16
    assert header[16:32] == ipaddress.IPv6Address("fd00::5").packed
    assert header[32:48] == ipaddress.IPv6Address("64:ff9b:1::f0a8:6617").packed
    assert struct.unpack("!HH", header[48:52]) == (40000, 443)


def test_v4_mapped_pair_is_sent_as_ipv4() -> None:
    assert encode_v2(("::ffff:10.0.0.1", 1), ("::ffff:10.0.0.2", 2)) == encode_v2(
        ("10.0.0.1", 1), ("10.0.0.2", 2)
    )


def test_mixed_families_are_sent_as_ipv6_with_mapped_ipv4() -> None:
    header = encode_v2(("10.0.0.1", 1), ("fd00::1", 443))
    assert header[13] == 0x21
    assert header[16:32] == ipaddress.IPv6Address("::ffff:10.0.0.1").packed


def test_local_command_has_no_addresses() -> None:
    assert encode_v2_local() == SIGNATURE + bytes([0x20, 0x00, 0x00, 0x00])
