"""The giving side: a process that holds the listener serves the handover socket, and hands the listener to
the first process that asks for it and confirms that it accepts on it.

One exchange at a time (a rollout has one successor per node). While the taker has not said "taken", nothing
changes here: a taker that fails, declines or goes silent leaves this process serving as before. After
"taken", `on_taken` lets go (closes this process's copy of the listener, frees the monitoring port, starts
the drain), then "released" tells the taker so; the connection stays open until this process exits, so the
taker can tell that its predecessor still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from . import Record, wire
from .channel import Channel, ChannelError, describe

log = logging.getLogger(__name__)

# How long a taker may take between connecting and its hello, and between the offer and its verdict (it
# starts the VIP keeper and its listener in between).
HELLO_TIMEOUT = 2.0
VERDICT_TIMEOUT = 5.0


class Giver:
    def __init__(
        self,
        path: str,
        listener: Callable[[], int | None],
        on_taken: Callable[[str], Awaitable[None]],
        record: Record | None = None,
    ) -> None:
        self.path = path
        # The listening socket's descriptor, or None once it is closed (nothing to give).
        self.listener = listener
        self.on_taken = on_taken
        self.record = record or (lambda role, result: None)
        # Set once the listener has been handed over; `successor` says to whom ("PID 4242").
        self.given = asyncio.Event()
        self.successor: str | None = None
        self._socket: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._successor_channel: Channel | None = None

    async def open(self) -> None:
        """Publish the handover socket at `path` and serve it. OSError if the path cannot be used."""
        self._socket, self._identity = publish(self.path)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        """Stop offering the listener; remove the socket file unless a successor has put its own there."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._stop_listening()

    async def close(self) -> None:
        """At exit: stop offering, and close the connection to the successor (which tells it we are gone)."""
        await self.stop()
        if self._successor_channel is not None:
            self._successor_channel.close()
            self._successor_channel = None

    def _stop_listening(self) -> None:
        if self._socket is None:
            return
        self._socket.close()
        self._socket = None
        with contextlib.suppress(OSError):
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == self._identity:
                os.unlink(self.path)

    async def _serve(self) -> None:
        assert self._socket is not None
        loop = asyncio.get_running_loop()
        while True:
            connection, _ = await loop.sock_accept(self._socket)
            channel = Channel(connection)
            try:
                given = await self._exchange(channel)
            except ChannelError as error:
                log.warning("listener handover failed (%s): still serving", error)
                self.record("giver", "failed")
                given = False
            if not given:
                channel.close()
                continue
            self._successor_channel = channel
            # The successor serves the handover socket from now on (it renames its own over this path).
            self._socket.close()
            self._socket = None
            return

    async def _exchange(self, channel: Channel) -> bool:
        seen_pid, uid = channel.peer()
        if uid not in (0, os.getuid()):
            allowed = "root" if os.getuid() == 0 else f"root and uid {os.getuid()}"
            raise ChannelError(f"a process of uid {uid} asked for the listener (only {allowed} may have it)")
        hello, _ = await channel.receive(wire.Hello, HELLO_TIMEOUT)
        taker = describe(hello.pid, seen_pid)
        fd = self.listener()
        if fd is None:
            await channel.send(wire.Offer(os.getpid(), ()))
            log.info("%s asked for the listener, which is closed already (end of the drain)", taker)
            return False
        await channel.send(wire.Offer(os.getpid(), (wire.LISTENER,)), [fd])
        verdict, _ = await channel.receive(wire.Verdict, VERDICT_TIMEOUT)
        if not verdict.taken:
            log.warning("%s declined the listener (%s): still serving", taker, verdict.why)
            self.record("giver", "declined")
            return False
        try:
            await self.on_taken(taker)
        finally:
            # Even if letting go failed half-way: the taker accepts on the listener already.
            self.successor = taker
            self.given.set()
            with contextlib.suppress(ChannelError):
                await channel.send(wire.Released())
        log.info("handed over the listener to %s", taker)
        self.record("giver", "given")
        return True


def publish(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening SOCK_SEQPACKET socket at `path`, mode 0600, put in place atomically (bound under a
    temporary name, then renamed over whatever is there: a stale file of a crashed process, or the
    predecessor's). Returns it and the file's (device, inode), so that it is removed only while it is ours."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    temporary = f"{path}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        sock.listen(4)
        sock.setblocking(False)
        os.rename(temporary, path)
        stat = os.stat(path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return sock, (stat.st_dev, stat.st_ino)
