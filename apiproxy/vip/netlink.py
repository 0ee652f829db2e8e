"""The few netlink operations a VIP pass needs, behind a small interface (like the Go sidecar's handle).

`Netlink` is the seam the pass logic is written and unit-tested against; `PyrouteNetlink` implements it
with pyroute2's synchronous `IPRoute`. An `IPRoute` belongs to the thread that created it (it runs its
own event loop there), so a `PyrouteNetlink` is created, used and closed on one thread.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import IPAddress

IFF_UP = 0x1
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0  # "global" in `ip addr`


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


def full_prefix(address: IPAddress) -> int:
    return 32 if address.version == 4 else 128


class PyrouteNetlink:
    """`Netlink` over pyroute2's sync `IPRoute`, optionally inside a named network namespace (tests)."""

    def __init__(self, netns: str | None = None) -> None:
        # Importing pyroute2 resets the `pyroute2` logger to NOTSET (pyroute2/config/log.py), undoing the
        # level the application chose: keep that level.
        logger = logging.getLogger("pyroute2")
        level = logger.level
        from pyroute2 import IPRoute

        logger.setLevel(level)

        # groups=0: a request socket; kernel events are read by `watch`, not queued here.
        self._ipr: Any = IPRoute(groups=0, netns=netns) if netns else IPRoute(groups=0)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from pyroute2.netlink.exceptions import NetlinkError as PyrouteError

        try:
            return getattr(self._ipr, method)(*args, **kwargs)
        except PyrouteError as error:
            command = args[0] if args else ""
            raise NetlinkError(error.code, f"{method} {command}: {os.strerror(error.code)}") from None

    def link_by_name(self, name: str) -> Link | None:
        try:
            (message,) = self._call("link", "get", ifname=name)
        except NetlinkError as error:
            if error.errno == errno.ENODEV:
                return None
            raise
        return Link(message["index"], message.get("IFLA_IFNAME"), bool(message["flags"] & IFF_UP))

    def add_dummy_link(self, name: str) -> None:
        self._call("link", "add", ifname=name, kind="dummy")

    def set_link_up(self, index: int) -> None:
        self._call("link", "set", index=index, state="up")

    def delete_link(self, index: int) -> None:
        self._call("link", "del", index=index)

    def addresses_of(self, address: IPAddress) -> list[Address]:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        found = []
        for message in self._call("addr", "dump", family=family):
            # IFA_LOCAL is the local address (IFA_ADDRESS is the peer on point-to-point IPv4 links).
            text = message.get("IFA_LOCAL") or message.get("IFA_ADDRESS")
            if text and ipaddress.ip_address(text) == address:
                found.append(Address(message["index"], address, message["prefixlen"], message["scope"]))
        return found

    def add_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        # IPv6: no duplicate address detection. The VIP is node-local, and a tentative address cannot
        # be bound until DAD finishes.
        flags = {"flags": IFA_F_NODAD} if address.version == 6 else {}
        try:
            self._call(
                "addr", "add", index=link_index, address=str(address), prefixlen=prefixlen,
                scope=RT_SCOPE_UNIVERSE, **flags,
            )  # fmt: skip
        except NetlinkError as error:
            if error.errno == errno.EEXIST:
                return False
            raise
        return True

    def delete_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        try:
            self._call("addr", "del", index=link_index, address=str(address), prefixlen=prefixlen)
        except NetlinkError as error:
            if error.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise
        return True

    def close(self) -> None:
        self._ipr.close()
