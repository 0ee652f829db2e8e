"""Envoy's Address message, read the same way wherever the bootstrap has one: the listeners and the admin
(addresses Envoy binds: IP literals), the clusters' endpoints (addresses Envoy connects to: a DNS name too,
unless the cluster is STATIC). What differs between those places is data, an `AddressRules`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..config import Endpoint, is_hostname
from ..documents import show
from .fields import ADDRESS_FIELDS, PIPE_FIELDS, SOCKET_ADDRESS_FIELDS
from .message import BootstrapError, Message


@dataclass(frozen=True, slots=True)
class AddressRules:
    """How one place of the bootstrap may spell its address."""

    # Bound by Envoy (a listener, the admin) rather than connected to (a cluster's endpoint).
    listening: bool
    # Why a DNS name is refused here; None where Envoy resolves one (a DNS cluster's endpoint).
    ip_only: str | None = "expected an IP address"
    port_zero: bool = False


LISTENER = AddressRules(listening=True)
ADMIN = AddressRules(listening=True, port_zero=True)
DNS_ENDPOINT = AddressRules(listening=False, ip_only=None)
STATIC_ENDPOINT = AddressRules(listening=False, ip_only="a STATIC cluster needs an IP address")


def socket_address(address: Message, rules: AddressRules) -> Endpoint:
    """A TCP socket address; a pipe is refused."""
    address.check(ADDRESS_FIELDS)
    if address.has("pipe"):
        over = "TCP addresses only" if rules.listening else "the gateway is reached over TCP"
        raise BootstrapError(address.at("pipe"), f"not supported ({over})")
    return _socket_address(address.require("socket_address"), rules)


def socket_address_or_pipe(address: Message, rules: AddressRules) -> Endpoint | str:
    """A TCP socket address, or a pipe's path (the admin, and the cluster that points at it)."""
    address.check(ADDRESS_FIELDS)
    pipe = address.message("pipe")
    if pipe is None:
        return _socket_address(address.require("socket_address"), rules)
    pipe.check(PIPE_FIELDS)
    path = pipe.string("path")
    if not path:
        raise BootstrapError(pipe.at("path"), "required")
    return path


def _socket_address(socket_address: Message, rules: AddressRules) -> Endpoint:
    socket_address.check(SOCKET_ADDRESS_FIELDS)
    if socket_address.enum("protocol", ("TCP", "UDP")) != "TCP":
        raise BootstrapError(socket_address.at("protocol"), "UDP: not supported")
    # Only a bound socket has an IPv6-only choice to make; a cluster's ipv4_compat has no effect in Envoy.
    if rules.listening and socket_address.boolean("ipv4_compat"):
        raise BootstrapError(
            socket_address.at("ipv4_compat"), "true: not supported (IPv6 sockets are IPv6-only)"
        )
    host = socket_address.string("address")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if rules.ip_only is not None:
            raise BootstrapError(socket_address.at("address"), f"{rules.ip_only}, got {show(host)}") from None
        if not is_hostname(host):
            raise BootstrapError(
                socket_address.at("address"), f"expected a DNS name or an IP address, got {show(host)}"
            ) from None
    port = socket_address.integer("port_value", 0, maximum=65535)
    if port == 0 and not rules.port_zero:
        zero = "0 (a port the kernel picks)" if rules.listening else "0"
        raise BootstrapError(socket_address.at("port_value"), f"{zero}: not supported, expected 1-65535")
    return Endpoint(host, port)
