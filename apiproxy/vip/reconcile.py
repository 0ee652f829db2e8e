"""One sync pass, the Go sidecar's semantics, against the `Netlink` interface (no I/O of its own).

A pass: get the link named by the interface option, or create it as a dummy link, and set it up; delete
the VIP from every other link; make sure `VIP/32` (`/128`) with global scope is on the link, "already
there" counting as success. No routes. Passes are idempotent: the second of two passes changes nothing.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..config import IPAddress
from .netlink import RT_SCOPE_UNIVERSE, Link, Netlink, NetlinkError, full_prefix


@dataclass(slots=True)
class PassResult:
    link: Link
    created_link: bool = False
    # What the pass changed, one phrase each, for the log ("added 10.96.0.2/32 to lo").
    changes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def _get_or_create_link(netlink: Netlink, name: str) -> tuple[Link, bool]:
    link = netlink.link_by_name(name)
    if link is not None:
        return link, False
    try:
        netlink.add_dummy_link(name)
    except NetlinkError as error:
        # Someone else created it between our look-up and our request: use theirs.
        if error.errno != errno.EEXIST:
            raise NetlinkError(error.errno, f"creating dummy link {name}: {error.strerror}") from None
        created = False
    else:
        created = True
    link = netlink.link_by_name(name)
    if link is None:
        raise NetlinkError(errno.ENODEV, f"link {name} vanished right after it was created")
    return link, created


def sync_pass(netlink: Netlink, address: IPAddress, interface: str) -> PassResult:
    link, created = _get_or_create_link(netlink, interface)
    result = PassResult(link, created)
    if created:
        result.changes.append(f"created dummy link {interface}")
    if not link.up:
        # A down link has no local route for its addresses: the VIP would be there but unreachable.
        netlink.set_link_up(link.index)
        result.changes.append(f"set link {interface} up")
    prefix = full_prefix(address)
    present = False
    for entry in netlink.addresses_of(address):
        if entry.link_index != link.index:
            if netlink.delete_address(entry.link_index, address, entry.prefixlen):
                result.changes.append(f"removed {address}/{entry.prefixlen} from link #{entry.link_index}")
        elif entry.prefixlen != prefix or entry.scope != RT_SCOPE_UNIVERSE:
            # The same address with another prefix or scope is not the VIP we keep.
            if netlink.delete_address(link.index, address, entry.prefixlen):
                result.changes.append(
                    f"removed {address}/{entry.prefixlen} (scope {entry.scope}) from {interface}"
                )
        else:
            present = True
    if not present and netlink.add_address(link.index, address, prefix):
        result.changes.append(f"added {address}/{prefix} to {interface}")
    return result


def remove(netlink: Netlink, address: IPAddress, interface: str, *, delete_link: bool) -> list[str]:
    """Cleanup on exit: the VIP off the interface, and the link itself if this process created it."""
    link = netlink.link_by_name(interface)
    if link is None:
        return []
    changes = []
    for entry in netlink.addresses_of(address):
        if entry.link_index == link.index and netlink.delete_address(link.index, address, entry.prefixlen):
            changes.append(f"removed {address}/{entry.prefixlen} from {interface}")
    if delete_link:
        netlink.delete_link(link.index)
        changes.append(f"deleted link {interface}")
    return changes


class Rules(Protocol):
    """The optional firewall rules kept with the VIP (`iptables.IPTables`)."""

    def ensure(self) -> list[str]: ...
    def remove(self) -> list[str]: ...


@dataclass(slots=True)
class PassReport:
    link_index: int | None
    # The VIP is on its link now.
    present: bool
    changes: list[str]
    # Set when the pass did not complete; `present` tells whether the address part did.
    error: str | None = None


class Reconciler:
    """Passes and cleanup for one VIP, remembering across passes whether it created the link.

    Not thread-safe and bound to one thread (a pyroute2 handle is): `service` runs it on its own worker
    thread, the one-shot sidecar on the main thread. The netlink handle is opened lazily and re-opened
    after a failure, so a broken socket heals on the next pass.
    """

    def __init__(self, address: IPAddress, interface: str, netlink_factory: Callable[[], Netlink],
                 rules: Callable[[], Rules] | None = None) -> None:  # fmt: skip
        self.address = address
        self.interface = interface
        self._netlink_factory = netlink_factory
        self._rules_factory = rules
        self._netlink: Netlink | None = None
        self._rules: Rules | None = None
        self.created_link = False

    def _handle(self) -> Netlink:
        if self._netlink is None:
            self._netlink = self._netlink_factory()
        return self._netlink

    def _drop_handle(self) -> None:
        if self._netlink is not None:
            with contextlib.suppress(Exception):
                self._netlink.close()
            self._netlink = None

    def sync(self) -> PassReport:
        try:
            result = sync_pass(self._handle(), self.address, self.interface)
        except Exception as error:
            self._drop_handle()
            return PassReport(None, False, [], _describe(error))
        self.created_link |= result.created_link
        report = PassReport(result.link.index, True, result.changes)
        if self._rules_factory is not None:
            try:
                if self._rules is None:
                    self._rules = self._rules_factory()
                report.changes += self._rules.ensure()
            except Exception as error:
                report.error = _describe(error)
        return report

    def cleanup(self) -> list[str]:
        """Remove the VIP (and the link if a pass created it) and the rules. Raises on failure."""
        changes: list[str] = []
        errors: list[str] = []
        try:
            changes += remove(self._handle(), self.address, self.interface, delete_link=self.created_link)
        except Exception as error:
            errors.append(_describe(error))
        if self._rules_factory is not None:
            try:
                changes += (self._rules or self._rules_factory()).remove()
            except Exception as error:
                errors.append(_describe(error))
        if errors:
            raise CleanupError("; ".join(errors))
        return changes

    def close(self) -> None:
        self._drop_handle()


class CleanupError(RuntimeError):
    pass


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} (errno {error.errno})" if not error.filename else str(error)
    return str(error) or type(error).__name__
