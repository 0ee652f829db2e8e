"""The PROXY protocol version 2 header (haproxy's proxy-protocol.txt §2.2), sans-I/O.

Before GEP-30 the node proxy sent this header to the gateway's port 8443 instead of a CONNECT: the
destination address told the gateway which shoot the connection was for. Kept for migrations.
"""

from __future__ import annotations

import ipaddress
import struct

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_VERSION_2 = 0x20
_COMMAND_LOCAL = 0x00
_COMMAND_PROXY = 0x01
_AF_INET_STREAM = 0x11
_AF_INET6_STREAM = 0x21


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY command for a TCP connection from `source` to `destination` (address, port).

    Mixed families are sent as IPv6 (IPv4 as v4-mapped); an IPv4-mapped IPv6 pair as IPv4.
    """
    src, dst = _unmap(ipaddress.ip_address(source[0])), _unmap(ipaddress.ip_address(destination[0]))
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        family, body = _AF_INET_STREAM, src.packed + dst.packed
    else:
        family, body = _AF_INET6_STREAM, _as_v6(src).packed + _as_v6(dst).packed
    body += struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + struct.pack("!BBH", _VERSION_2 | _COMMAND_PROXY, family, len(body)) + body


def encode_v2_local() -> bytes:
    """A LOCAL command: the connection is the proxy's own (e.g. a health check); no addresses."""
    return SIGNATURE + struct.pack("!BBH", _VERSION_2 | _COMMAND_LOCAL, 0x00, 0)


def _unmap(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)
    return address
