"""Kernel link/address notifications: a parser for rtnetlink datagrams and the rule for which ones call
for a pass. Sans-I/O: bytes in, small frozen events out; `watch` does the reading.

Layouts from <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>, <linux/if_addr.h>; everything is
in host byte order and every message and attribute is padded to 4 bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from ..config import IPAddress

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
# Multicast groups the watcher joins: link changes and IPv4/IPv6 address changes.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_ATTR = struct.Struct("=HH")  # rtattr: length, type


def _align(length: int) -> int:
    return (length + 3) & ~3


@dataclass(frozen=True, slots=True)
class LinkEvent:
    deleted: bool
    index: int
    name: str
    up: bool

    def __str__(self) -> str:
        state = "deleted" if self.deleted else "up" if self.up else "down"
        return f"link {self.name} (#{self.index}) {state}"


@dataclass(frozen=True, slots=True)
class AddressEvent:
    deleted: bool
    link_index: int
    address: IPAddress | None
    prefixlen: int

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} {'deleted from' if self.deleted else 'added to'} link #{self.link_index}"


Event = LinkEvent | AddressEvent


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < _ATTR.size or start + length > end:
            break
        found.setdefault(kind, data[start + _ATTR.size : start + length])
        start += _align(length)
    return found


def _address(family_width: int, raw: bytes | None) -> IPAddress | None:
    if raw is None or len(raw) != family_width:
        return None
    return ipaddress.ip_address(raw)


def parse(data: bytes) -> Iterator[Event]:
    """The link and address events in one datagram; other message types are skipped."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > len(data):
            return
        body, end = offset + _HEADER.size, offset + length
        if kind in (RTM_NEWLINK, RTM_DELLINK) and body + _IFINFO.size <= end:
            _family, _type, index, flags, _change = _IFINFO.unpack_from(data, body)
            name = _attributes(data, body + _IFINFO.size, end).get(IFLA_IFNAME, b"")
            yield LinkEvent(kind == RTM_DELLINK, index, name.split(b"\0", 1)[0].decode(errors="replace"),
                            bool(flags & IFF_UP))  # fmt: skip
        elif kind in (RTM_NEWADDR, RTM_DELADDR) and body + _IFADDR.size <= end:
            family, prefixlen, _flags, _scope, index = _IFADDR.unpack_from(data, body)
            attributes = _attributes(data, body + _IFADDR.size, end)
            width = 4 if family == 2 else 16  # AF_INET, else AF_INET6
            raw = attributes.get(IFA_LOCAL, attributes.get(IFA_ADDRESS))
            yield AddressEvent(kind == RTM_DELADDR, index, _address(width, raw), prefixlen)
        offset += _align(length)


class Verdict(Enum):
    IGNORE = "ignore"
    # Something about the VIP or its link changed: run a pass.
    CHECK = "check"
    # The VIP is off its link right now (deleted, or the link is gone or down): not ready until repaired.
    LOST = "lost"


def assess(event: Event, vip: IPAddress, interface: str, link_index: int | None) -> Verdict:
    """What `event` means for a VIP kept on `interface` (whose index was `link_index` at the last pass)."""
    if isinstance(event, AddressEvent):
        if event.address != vip:
            return Verdict.IGNORE
        ours = event.link_index == link_index
        if event.deleted:
            return Verdict.LOST if ours else Verdict.IGNORE
        # Our own repair shows up as a new address on our link; anywhere else it must be removed.
        return Verdict.IGNORE if ours else Verdict.CHECK
    ours = event.index == link_index or event.name == interface
    if not ours:
        return Verdict.IGNORE
    if event.deleted or not event.up or event.name != interface:  # gone, down, or renamed away
        return Verdict.LOST
    # Our link re-created (by someone else) under a new index: the VIP is not on it yet.
    return Verdict.CHECK if event.index != link_index else Verdict.IGNORE
