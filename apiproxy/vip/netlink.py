"""The few netlink operations a VIP pass needs, behind a small interface (like the Go sidecar's handle).

`Netlink` is the seam the pass logic is written and unit-tested against; `KernelNetlink` implements it with
a plain blocking rtnetlink socket and the message layouts of `events`: eight requests do not need a netlink
library, and the sidecar's memory budget (≈4 MiB for the Go one) has no room for one. A `KernelNetlink` is
used by one thread at a time.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ..config import IPAddress
from . import events
from .events import full_prefix

__all__ = ["Address", "KernelNetlink", "Link", "Netlink", "NetlinkError", "full_prefix"]

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0  # "global" in `ip addr`
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x200, 0x400, 0x300
NETLINK_ROUTE = 0
# No answer in this time means the kernel side is wedged: fail the pass (it is retried) instead of hanging.
ANSWER_TIMEOUT = 10.0
_ERROR_CODE = struct.Struct("=i")


class NetlinkError(OSError):
    """A netlink request failed; `errno` is the kernel's answer."""


@dataclass(frozen=True, slots=True)
class Link:
    index: int
    name: str
    up: bool


@dataclass(frozen=True, slots=True)
class Address:
    """One address entry on one link, as the kernel lists it."""

    link_index: int
    address: IPAddress
    prefixlen: int
    scope: int


class Netlink(Protocol):
    def link_by_name(self, name: str) -> Link | None: ...
    def add_dummy_link(self, name: str) -> None: ...
    def set_link_up(self, index: int) -> None: ...
    def delete_link(self, index: int) -> None: ...
    def addresses_of(self, address: IPAddress) -> list[Address]:
        """Every entry of `address`, on any link."""
        ...

    def add_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        """Global scope, no label. False if the kernel already had it (EEXIST)."""
        ...

    def delete_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        """False if it was already gone."""
        ...

    def close(self) -> None: ...


def _attribute(kind: int, payload: bytes) -> bytes:
    raw = events.ATTR.pack(events.ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (events.align(len(raw)) - len(raw))


def _on_the_wire(address: IPAddress) -> tuple[int, bytes]:
    """Family and bytes as Go's netlink library sends them: an IPv4-mapped IPv6 address goes as IPv4
    (nl.GetIPFamily: To4() != nil), which the kernel then refuses with a /128 prefix (EINVAL)."""
    mapped = address.ipv4_mapped if address.version == 6 else None
    if mapped is not None:
        return socket.AF_INET, mapped.packed
    return (socket.AF_INET if address.version == 4 else socket.AF_INET6), address.packed


class KernelNetlink:
    """`Netlink` over one rtnetlink request socket. `sock` is for tests that open it inside a namespace."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._socket = sock
        try:
            sock.bind((0, 0))  # no multicast groups: kernel events are read by `watch`, not queued here
            sock.settimeout(ANSWER_TIMEOUT)
        except OSError:
            sock.close()
            raise
        self._sequence = 0

    def _send(self, kind: int, flags: int, body: bytes) -> int:
        self._sequence = (self._sequence + 1) & 0xFFFFFFFF
        header = events.HEADER.pack(
            events.HEADER.size + len(body), kind, NLM_F_REQUEST | flags, self._sequence, 0
        )
        self._socket.send(header + body)
        return self._sequence

    def _answers(self, what: str, sequence: int) -> Iterator[events.Event]:
        """The messages answering request `sequence` until its ack or the end of its dump; a kernel error
        is raised as `NetlinkError` naming `what`."""
        while True:
            try:
                data = self._socket.recv(1 << 17)
            except TimeoutError:
                raise NetlinkError(errno.ETIMEDOUT, f"{what}: no answer from the kernel") from None
            for kind, seq, body, end in events.split(data):
                if seq != sequence:
                    continue  # the answer to an earlier request that timed out
                if kind == events.NLMSG_DONE:
                    return
                if kind == events.NLMSG_ERROR:
                    (code,) = _ERROR_CODE.unpack_from(data, body)
                    if code:
                        raise NetlinkError(-code, f"{what}: {os.strerror(-code)}")
                    return  # the ack
                event = events.decode(kind, data, body, end)
                if event is not None:
                    yield event

    def _request(self, what: str, kind: int, flags: int, body: bytes) -> list[events.Event]:
        return list(self._answers(what, self._send(kind, flags | NLM_F_ACK, body)))

    def _link_request(self, what: str, kind: int, flags: int, index: int = 0, up: bool = False,
                      attributes: bytes = b"") -> list[events.Event]:  # fmt: skip
        change = IFF_UP if up else 0
        body = events.IFINFO.pack(socket.AF_UNSPEC, 0, index, change, change) + attributes
        return self._request(what, kind, flags, body)

    def link_by_name(self, name: str) -> Link | None:
        name_attribute = _attribute(events.IFLA_IFNAME, name.encode() + b"\0")
        try:
            answers = self._link_request("link get", events.RTM_GETLINK, 0, attributes=name_attribute)
        except NetlinkError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
        for answer in answers:
            if isinstance(answer, events.LinkEvent):
                return Link(answer.index, answer.name, answer.up)
        return None

    def add_dummy_link(self, name: str) -> None:
        kind = _attribute(events.IFLA_INFO_KIND, b"dummy")
        attributes = _attribute(events.IFLA_IFNAME, name.encode() + b"\0") + _attribute(
            events.IFLA_LINKINFO, kind
        )
        self._link_request("link add", events.RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, attributes=attributes)

    def set_link_up(self, index: int) -> None:
        self._link_request("link set", events.RTM_NEWLINK, 0, index, up=True)

    def delete_link(self, index: int) -> None:
        self._link_request("link del", events.RTM_DELLINK, 0, index)

    def addresses_of(self, address: IPAddress) -> list[Address]:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        sequence = self._send(events.RTM_GETADDR, NLM_F_DUMP, events.IFADDR.pack(family, 0, 0, 0, 0))
        return [
            Address(answer.link_index, address, answer.prefixlen, answer.scope)
            for answer in self._answers("addr dump", sequence)
            if isinstance(answer, events.AddressEvent) and answer.address == address
        ]

    def _address_request(self, what: str, kind: int, flags: int, link_index: int, address: IPAddress,
                         prefixlen: int) -> None:  # fmt: skip
        family, packed = _on_the_wire(address)
        # IPv6: no duplicate address detection. The VIP is node-local, and a tentative address cannot
        # be bound until DAD finishes.
        header_flags = IFA_F_NODAD if family == socket.AF_INET6 and kind == events.RTM_NEWADDR else 0
        body = events.IFADDR.pack(family, prefixlen, header_flags, RT_SCOPE_UNIVERSE, link_index)
        body += _attribute(events.IFA_LOCAL, packed) + _attribute(events.IFA_ADDRESS, packed)
        self._request(what, kind, flags, body)

    def add_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        try:
            # EXCL: the kernel answers EEXIST when it already has the entry, by its own rule of sameness.
            self._address_request("addr add", events.RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, link_index,
                                  address, prefixlen)  # fmt: skip
        except NetlinkError as error:
            if error.errno == errno.EEXIST:
                return False
            raise
        return True

    def delete_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        try:
            self._address_request("addr del", events.RTM_DELADDR, 0, link_index, address, prefixlen)
        except NetlinkError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise
        return True

    def close(self) -> None:
        self._socket.close()
