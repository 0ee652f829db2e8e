"""An in-memory `Netlink`: the unit seam of the pass logic (as the Go sidecar's tests fake its handle).

It models just what the kernel does for these calls: link names are unique; an address entry is (link,
address, prefix, scope); adding is EEXIST when the link has an IPv4 entry of the same address and prefix
(whatever its scope) or an IPv6 entry of the same address (whatever its prefix); deleting matches address
and prefix; an IPv4-mapped IPv6 address is sent as IPv4, as Go's library does, so a /128 of it is EINVAL;
a dummy link is created down.
"""

from __future__ import annotations

import errno

from apiproxy.config import IPAddress
from apiproxy.vip.netlink import RT_SCOPE_UNIVERSE, Address, Link, NetlinkError


class FakeNetlink:
    def __init__(self, links: dict[str, bool] | None = None, *, can_create: bool = True) -> None:
        self.links: dict[int, Link] = {}
        self.entries: list[Address] = []
        self.can_create = can_create
        self.calls: list[str] = []
        self.closed = False
        for name, up in (links or {"lo": True}).items():
            self._new_link(name, up)

    def _new_link(self, name: str, up: bool) -> Link:
        link = Link(max(self.links, default=0) + 1, name, up)
        self.links[link.index] = link
        return link

    def index(self, name: str) -> int:
        return next(link.index for link in self.links.values() if link.name == name)

    def place(self, name: str, address: IPAddress, prefixlen: int, scope: int = RT_SCOPE_UNIVERSE) -> None:
        self.entries.append(Address(self.index(name), address, prefixlen, scope))

    def where(self, address: IPAddress) -> list[tuple[str, int]]:
        return [(self.links[e.link_index].name, e.prefixlen) for e in self.entries if e.address == address]

    # --- the Netlink interface ---
    def link_by_name(self, name: str) -> Link | None:
        self.calls.append(f"link_by_name {name}")
        return next((link for link in self.links.values() if link.name == name), None)

    def add_dummy_link(self, name: str) -> None:
        self.calls.append(f"add_dummy_link {name}")
        if not self.can_create:
            raise NetlinkError(errno.EOPNOTSUPP, "link add: Operation not supported")
        if self.link_by_name(name) is not None:
            raise NetlinkError(errno.EEXIST, "link add: File exists")
        self._new_link(name, False)

    def set_link_up(self, index: int) -> None:
        self.calls.append(f"set_link_up {index}")
        link = self.links[index]
        self.links[index] = Link(link.index, link.name, True)

    def delete_link(self, index: int) -> None:
        self.calls.append(f"delete_link {index}")
        del self.links[index]
        self.entries = [e for e in self.entries if e.link_index != index]

    def addresses_of(self, address: IPAddress) -> list[Address]:
        return [e for e in self.entries if e.address == address]

    def add_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        self.calls.append(f"add_address {link_index} {address}/{prefixlen}")
        if address.version == 6 and address.ipv4_mapped is not None and prefixlen > 32:
            raise NetlinkError(errno.EINVAL, "addr add: Invalid argument")
        for e in self.entries:
            if (e.link_index, e.address) == (link_index, address) and (
                address.version == 6 or e.prefixlen == prefixlen
            ):
                return False
        self.entries.append(Address(link_index, address, prefixlen, RT_SCOPE_UNIVERSE))
        return True

    def delete_address(self, link_index: int, address: IPAddress, prefixlen: int) -> bool:
        self.calls.append(f"delete_address {link_index} {address}/{prefixlen}")
        before = len(self.entries)
        self.entries = [
            e
            for e in self.entries
            if (e.link_index, e.address, e.prefixlen) != (link_index, address, prefixlen)
        ]
        return len(self.entries) != before

    def close(self) -> None:
        self.closed = True
