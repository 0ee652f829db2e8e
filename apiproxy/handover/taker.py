"""The taking side: a starting process asks the running one for its listener before binding its own.

`request_listener` returns the listener received (or None: nobody answered, or the exchange failed, so the
caller binds as usual). The caller checks it is the address it would have bound, starts accepting on it,
then `confirm`s: the giver closes its copy and frees the monitoring port, and says "released".
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass

from ..addresses import peer
from . import Record, wire
from .channel import Channel, ChannelError, close_all, describe

log = logging.getLogger(__name__)

# The whole request (connect, hello, offer): a running process answers in milliseconds; one that does not
# is not worth delaying the start for.
REQUEST_TIMEOUT = 2.0
# From "taken" to "released": the giver closes its listener and joins its monitoring threads.
RELEASE_TIMEOUT = 10.0


def _ignore(role: str, result: str) -> None:
    pass


@dataclass
class Inherited:
    """A listener received from the running process, and the connection to it."""

    listener: socket.socket
    predecessor: str  # "PID 17"
    channel: Channel
    record: Record = _ignore

    async def decline(self, why: str) -> None:
        """Give the listener back (the giver keeps serving): it is not what this process would listen on."""
        log.warning("not taking the listener from %s: %s; binding instead", self.predecessor, why)
        self.record("taker", "declined")
        with contextlib.suppress(ChannelError):
            await self.channel.send(wire.Verdict(False, why))
        self.listener.close()
        self.channel.close()

    async def confirm(self) -> bool:
        """Say "taken" (this process accepts on the listener now) and wait for "released". False, with a
        warning, if the giver did not answer in time: it may still hold the monitoring port."""
        address = self.listener.getsockname()
        try:
            await self.channel.send(wire.Verdict(True))
            await self.channel.receive(wire.Released, RELEASE_TIMEOUT)
        except ChannelError as error:
            log.warning("took over the listener from %s, which did not confirm its release: %s",
                        self.predecessor, error)  # fmt: skip
            self.record("taker", "unconfirmed")
            return False
        log.info("took over the listener %s from %s", peer(address), self.predecessor)
        self.record("taker", "taken")
        return True

    def predecessor_running(self) -> bool:
        """Whether the process that handed the listener over still runs (it keeps the connection open)."""
        return not self.channel.closed_by_peer()

    def close(self) -> None:
        self.channel.close()


async def request_listener(path: str, record: Record = _ignore) -> Inherited | None:
    """Ask the process serving `path` for its listener. None when there is none to take (nobody answers,
    a stale socket file, the exchange failed): then bind as usual."""
    try:
        channel = await Channel.connect(path, REQUEST_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError):
        log.info("no running process at the handover socket %s: binding the listener", path)
        record("taker", "none")
        return None
    except OSError as error:
        log.warning("handover socket %s: %s: binding the listener", path, error.strerror or error)
        record("taker", "failed")
        return None
    try:
        await channel.send(wire.Hello(os.getpid()), timeout=REQUEST_TIMEOUT)
        offer, fds = await channel.receive(wire.Offer, REQUEST_TIMEOUT, max_fds=wire.MAX_DESCRIPTORS)
    except ChannelError as error:
        log.warning("asking for the listener at %s failed (%s): binding it", path, error)
        record("taker", "failed")
        channel.close()
        return None
    seen_pid, _ = channel.peer()
    giver = describe(offer.pid, seen_pid)
    if offer.sockets != (wire.LISTENER,) or len(fds) != 1:
        close_all(fds)
        channel.close()
        if not offer.sockets:
            log.info("%s has no listener to give (it is closing): binding it", giver)
            record("taker", "none")
        else:
            log.warning(
                "%s offered %s with %d descriptors: binding the listener", giver, offer.sockets, len(fds)
            )
            record("taker", "failed")
        return None
    try:
        listener = socket.socket(fileno=fds[0])
    except OSError as error:
        close_all(fds)
        channel.close()
        log.warning("%s sent a descriptor that is no socket (%s): binding the listener", giver, error)
        record("taker", "failed")
        return None
    return Inherited(listener, giver, channel, record)
