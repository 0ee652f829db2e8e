"""One handover connection on the event loop: a non-blocking AF_UNIX SOCK_SEQPACKET socket that sends and
receives the wire's messages, descriptors riding along in SCM_RIGHTS. Shared by the giver and the taker.

asyncio has no call for ancillary data, so the channel waits for readiness with `add_reader`/`add_writer`
and does the `sendmsg`/`recvmsg` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Sequence

from . import wire

# struct ucred: pid, uid, gid
_UCRED = struct.Struct("3i")


class ChannelError(Exception):
    """The connection failed or timed out, or the peer broke the protocol: the handover is off."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    @classmethod
    async def connect(cls, path: str, timeout: float) -> Channel:
        """Connect to the giver at `path`. OSError as the kernel says it (ENOENT, ECONNREFUSED, ...)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            # A Unix socket connect completes or fails at once; a full backlog is EAGAIN, not a wait.
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def peer(self) -> tuple[int, int]:
        """The peer's (pid, uid) as the kernel saw them at connect (SO_PEERCRED). The pid is 0 when the peer
        lives in a PID namespace this process cannot see (another pod)."""
        pid, uid, _ = _UCRED.unpack(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        return pid, uid

    async def send(self, message: wire.Message, fds: Sequence[int] = (), timeout: float = 2.0) -> None:
        record = wire.encode(message)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.sock.sendmsg([record], ancillary)
                    return
                except BlockingIOError:
                    await self._ready(writable=True)
                except OSError as error:
                    raise ChannelError(
                        f"sending the {type(message).__name__.lower()}: {error.strerror or error}"
                    ) from None

    async def receive(
        self, expected: type[wire.M], timeout: float, max_fds: int = 0
    ) -> tuple[wire.M, list[int]]:
        """The next message, which must be an `expected`, and the descriptors that came with it (the caller
        owns them). ChannelError on a timeout, a closed connection or anything else."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        record, fds, flags, _ = socket.recv_fds(self.sock, wire.MAX_RECORD, max_fds)
                        break
                    except BlockingIOError:
                        await self._ready(writable=False)
        except TimeoutError:
            raise ChannelError(f"no {expected.__name__.lower()} within {timeout:g}s") from None
        except OSError as error:
            raise ChannelError(
                f"reading the {expected.__name__.lower()}: {error.strerror or error}"
            ) from None
        try:
            if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
                raise ChannelError(f"a {expected.__name__.lower()} larger than expected (truncated)")
            return wire.decode(record, expected), fds
        except BaseException as error:
            close_all(fds)
            if isinstance(error, wire.WireError):
                raise ChannelError(str(error)) from None
            raise

    def closed_by_peer(self) -> bool:
        """Whether the peer has closed its end (it exited): a look without waiting."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def _ready(self, *, writable: bool) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self.sock.fileno()
        add, remove = (
            (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
        )

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        add(fd, wake)
        try:
            await ready
        finally:
            remove(fd)

    def close(self) -> None:
        self.sock.close()


def describe(reported_pid: int, seen_pid: int) -> str:
    """The peer as the logs name it. SO_PEERCRED says 0 for a process in a PID namespace this one cannot
    see (the other pod of a rollout): then the PID it reported, in its own namespace."""
    return f"PID {seen_pid}" if seen_pid else f"PID {reported_pid} (in its own PID namespace)"


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
