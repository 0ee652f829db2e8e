"""rtnetlink link/address messages: their layouts, a parser for what the kernel sends (notifications and
dump answers alike) and the rule for which notifications call for a pass. Sans-I/O: bytes in, small frozen
events out; `watch` reads notifications, `netlink` sends requests and reads their answers.

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

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 16, 17, 18, 20, 21, 22
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1
# Multicast groups the watcher joins: link changes and IPv4/IPv6 address changes.
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
ATTR = struct.Struct("=HH")  # rtattr: length, type


def align(length: int) -> int:
    return (length + 3) & ~3


def full_prefix(address: IPAddress) -> int:
    """The VIP's own entry is the whole address: /32, /128."""
    return 32 if address.version == 4 else 128


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
    scope: int = 0  # RT_SCOPE_*: 0 global ("universe"), 254 host

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} {'deleted from' if self.deleted else 'added to'} link #{self.link_index}"


Event = LinkEvent | AddressEvent


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while start + ATTR.size <= end:
        length, kind = ATTR.unpack_from(data, start)
        if length < ATTR.size or start + length > end:
            break
        found.setdefault(kind, data[start + ATTR.size : start + length])
        start += align(length)
    return found


def _address(family_width: int, raw: bytes | None) -> IPAddress | None:
    if raw is None or len(raw) != family_width:
        return None
    return ipaddress.ip_address(raw)


def split(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, sequence number, body start, end) of each whole message in a datagram."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, _flags, seq, _pid = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            return
        yield kind, seq, offset + HEADER.size, offset + length
        offset += align(length)


def parse(data: bytes) -> Iterator[Event]:
    """The link and address events in one datagram; other message types are skipped."""
    for kind, _seq, body, end in split(data):
        event = decode(kind, data, body, end)
        if event is not None:
            yield event


def decode(kind: int, data: bytes, body: int, end: int) -> Event | None:
    """One link or address message (body from `body` to `end`), or None for any other kind."""
    if kind in (RTM_NEWLINK, RTM_DELLINK) and body + IFINFO.size <= end:
        _family, _type, index, flags, _change = IFINFO.unpack_from(data, body)
        name = _attributes(data, body + IFINFO.size, end).get(IFLA_IFNAME, b"")
        return LinkEvent(kind == RTM_DELLINK, index, name.split(b"\0", 1)[0].decode(errors="replace"),
                         bool(flags & IFF_UP))  # fmt: skip
    if kind in (RTM_NEWADDR, RTM_DELADDR) and body + IFADDR.size <= end:
        family, prefixlen, _flags, scope, index = IFADDR.unpack_from(data, body)
        attributes = _attributes(data, body + IFADDR.size, end)
        width = 4 if family == 2 else 16  # AF_INET, else AF_INET6
        # IFA_LOCAL is the local address (IFA_ADDRESS is the peer on point-to-point IPv4 links).
        raw = attributes.get(IFA_LOCAL, attributes.get(IFA_ADDRESS))
        return AddressEvent(kind == RTM_DELADDR, index, _address(width, raw), prefixlen, scope)
    return None


class Verdict(Enum):
    IGNORE = "ignore"
    # Something about the VIP or its link changed: run a pass.
    CHECK = "check"
    # The VIP is off its link right now (deleted, or the link is gone or down): not ready until repaired.
    LOST = "lost"


def assess(event: Event, vip: IPAddress, interface: str, link_index: int | None) -> Verdict:
    """What `event` means for a VIP kept on `interface` (whose index was `link_index` at the last pass)."""
    if isinstance(event, AddressEvent):
        # Only the whole-length entry is the VIP; the same address with a shorter prefix (a /24 someone
        # configured) is left alone on every link, as the Go sidecar leaves it.
        if event.address != vip or event.prefixlen != full_prefix(vip):
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
