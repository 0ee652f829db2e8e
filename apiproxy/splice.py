"""Zero-copy relay for one direction of a tunnel: splice(2) from one socket through a pipe into the other.

Every tunnel starts on the Protocol pair of `tunnel.py`, which costs two descriptors and no pipe, so
10,000 idle or chatty tunnels stay cheap. A direction that turns out to carry bulk data (one read of at
least `SPLICE_THRESHOLD` bytes) moves onto a `SplicePump`: the source transport stops reading, and the
pump moves the bytes socket -> pipe -> socket inside the kernel, so they are never copied into Python.
On loopback (iperf3, one stream) this took the proxy's CPU per GB from 0.53-0.55 s to 0.33-0.35 s, against
Envoy's 0.80-0.95 s in the same runs.

The pump works on duplicates of the two transports' descriptors (uvloop refuses readers on a transport's
own descriptor) and on a pipe, four descriptors it owns and closes in `close()`; the transports keep
owning the connections (writes of the other direction, half-close, close). Until `close()` the duplicates
keep the sockets open, so a tunnel closes its pumps before or as it closes its transports. A pump lives
for a burst: once a direction has been quiet for a while (`quiet()`, polled by the tunnel context) the
tunnel closes it and its transport reads again, so idle tunnels hold no pipe, nor pipe quota.

Flow control is the pipe and the destination's unsent queue. The pump reads the source into the pipe
while the pipe has room, also while the destination is busy (so a burst never waits for a round trip of
the pump), and passes the pipe's bytes on whenever the destination takes them; a full pipe stops the
reading, so a direction holds at most one pipe's worth (`PIPE_SIZE`) beside the sockets, and an EOF is
passed on only after every byte before it. The destination socket takes bytes only while fewer than
`unsent_limit` (the tunnel's buffer size) wait unsent in it (TCP_NOTSENT_LOWAT): without that bound the
pump filled the socket's send queue as far as autotuning let it (up to 4 MiB, kernel memory charged to the
pod), and the kernel then sent those bytes whenever the receiver's window moved, that is, on the
receiver's time: on one host that put the node proxy's TCP sending work into the seed gateway's CPU
figures (perf: tcp_write_xmit under the gateway's readv), 1.3-1.5x the gateway's CPU per GB behind Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable
from typing import Protocol

from .addresses import peer as format_peer

log = logging.getLogger(__name__)

# A tunnel reads at most this much at a time, on the Protocol relay and on a pump alike: what one direction
# holds beside its --buffer-size is bounded by one such read (a peer that stops reading costs no more).
READ_SIZE = 64 * 1024
# A read that fills READ_SIZE means the sender streams faster than the tunnel reads: worth a pipe.
SPLICE_THRESHOLD = READ_SIZE
# Pipe rounds per readiness callback: bounded work per callback, so one bulk tunnel cannot hold the loop;
# the loop's polls are level-triggered and call again while data is waiting.
_ROUNDS = 8
# The pipe between the two sockets: the most one direction holds in the kernel. Four times Linux's
# 64 KiB default: as many bytes per splice as uvloop's reads (256 KiB) take (measured on loopback, CPU per
# GB: 64 KiB pipes 0.46-0.52 s, 256 KiB 0.33-0.35 s, 1 MiB 0.24-0.27 s; Envoy 0.80-0.95 s). Not 1 MiB:
# pipe pages count against a per-user quota (fs.pipe-user-pages-soft, 64 MiB), shared with every other
# process of the node's root user.
PIPE_SIZE = 256 * 1024
MIN_PIPE_SIZE = 64 * 1024
# splice(2) is Linux's; elsewhere every tunnel stays on the Protocol pair.
AVAILABLE = hasattr(os, "splice")
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def _limit_unsent(fd: int, limit: int) -> None:
    # Through a socket object borrowing the descriptor: no system call but the setsockopt.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, limit)
    finally:
        sock.detach()


def _fileno(transport: asyncio.BaseTransport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise OSError("the transport has no socket")
    fd: int = sock.fileno()
    if fd < 0:
        raise OSError("the transport's socket is closed")
    return fd


class SplicePump:
    """Moves one direction's bytes from `src` to `dst` with splice(2). See the module docstring."""

    __slots__ = (
        "_blocked_fill",
        "_capacity",
        "_dst",
        "_in_pipe",
        "_loop",
        "_moved_since_check",
        "_on_eof",
        "_on_moved",
        "_on_read_error",
        "_on_write_error",
        "_pipe_r",
        "_pipe_w",
        "_reading",
        "_src",
        "_src_eof",
        "_stalled_checks",
        "_writing",
        "_written_since_check",
        "closed",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fds: tuple[int, int, int, int],
        capacity: int,
        on_moved: Callable[[int], None],
        on_eof: Callable[[], object],
        on_read_error: Callable[[OSError], None],
        on_write_error: Callable[[OSError], None],
        blocked_fill: int = 0,
    ) -> None:
        self._loop = loop
        self._src, self._dst, self._pipe_r, self._pipe_w = fds
        self._capacity = capacity
        # While `dst` takes nothing, the pipe is filled only this far: a destination that stops reading
        # leaves at most this much in the pipe, which is what a stalled pump hands back (`drain`).
        self._blocked_fill = min(blocked_fill or capacity, capacity)
        self._in_pipe = 0
        self._moved_since_check = False
        self._written_since_check = False
        self._stalled_checks = 0
        self._reading = False
        self._writing = False
        self._src_eof = False
        self._on_moved = on_moved
        self._on_eof = on_eof
        self._on_read_error = on_read_error
        self._on_write_error = on_write_error
        self.closed = False

    @classmethod
    def open(
        cls,
        loop: asyncio.AbstractEventLoop,
        src: asyncio.BaseTransport,
        dst: asyncio.BaseTransport,
        on_moved: Callable[[int], None],
        on_eof: Callable[[], object],
        on_read_error: Callable[[OSError], None],
        on_write_error: Callable[[OSError], None],
        unsent_limit: int = 0,
    ) -> SplicePump:
        """A pump from `src` to `dst`, not yet started. Raises OSError (e.g. EMFILE) if it cannot have its
        descriptors; then nothing is left open and the tunnel goes on with its Protocol relay.
        `unsent_limit`: `dst` takes no more while this many bytes wait unsent in it (TCP_NOTSENT_LOWAT)."""
        owned: list[int] = []
        try:
            owned.append(os.dup(_fileno(src)))
            owned.append(os.dup(_fileno(dst)))
            owned.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
            with contextlib.suppress(OSError):  # over the user's pipe quota: keep the size it has
                fcntl.fcntl(owned[3], fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            size = fcntl.fcntl(owned[3], fcntl.F_GETPIPE_SZ)
            if size < MIN_PIPE_SIZE:
                # Past fs.pipe-user-pages-soft the kernel hands out 2-page pipes: 8 KiB per splice would
                # cost more CPU than the Protocol relay it replaces.
                raise OSError(errno.ENOBUFS, f"the kernel gave a pipe of only {size} bytes (pipe quota)")
        except OSError:
            for fd in owned:
                os.close(fd)
            raise
        src_fd, dst_fd, pipe_r, pipe_w = owned
        if unsent_limit:
            with contextlib.suppress(OSError):  # not TCP (a test's socket pair): nothing to bound
                _limit_unsent(dst_fd, unsent_limit)
        return cls(loop, (src_fd, dst_fd, pipe_r, pipe_w), size, on_moved, on_eof, on_read_error, on_write_error,
                   blocked_fill=unsent_limit)  # fmt: skip

    def start(self) -> None:
        self._set_reading(True)

    def check(self) -> str | None:
        """Called every CHECK_INTERVAL: "quiet" when nothing moved since the last check and nothing is in
        flight (the pump can be closed and the direction handed back without reordering a byte); "stalled"
        when `dst` has taken nothing for two checks in a row while bytes wait for it (a peer that stopped
        reading: the pump hands back what it holds, see `drain`); else None."""
        moved, self._moved_since_check = self._moved_since_check, False
        written, self._written_since_check = self._written_since_check, False
        if self.closed:
            return None
        if not moved and self._in_pipe == 0:
            return "quiet"
        self._stalled_checks = 0 if written or not self._writing else self._stalled_checks + 1
        return "stalled" if self._stalled_checks >= 2 else None

    def drain(self) -> bytes:
        """The bytes still in the pipe (at most the blocked fill), read out so they can be handed to the
        destination transport; then close the pump."""
        data = b""
        with contextlib.suppress(OSError):
            while len(data) < self._in_pipe:
                chunk = os.read(self._pipe_r, self._in_pipe - len(data))
                if not chunk:
                    break
                data += chunk
        self.close()
        return data

    def close(self) -> None:
        """Stop moving bytes and close the pump's descriptors (bytes still in the pipe are dropped: a pump is
        closed early only when its tunnel is cut)."""
        if self.closed:
            return
        self.closed = True
        self._stop()
        for fd in (self._src, self._dst, self._pipe_r, self._pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop(self) -> None:
        if not self._loop.is_closed():
            self._set_reading(False)
            self._set_writing(False)

    def _set_reading(self, on: bool) -> None:
        if on != self._reading:
            self._reading = on
            if on:
                self._loop.add_reader(self._src, self._readable)
            else:
                self._loop.remove_reader(self._src)

    def _set_writing(self, on: bool) -> None:
        if on != self._writing:
            self._writing = on
            if on:
                self._loop.add_writer(self._dst, self._writable)
            else:
                self._loop.remove_writer(self._dst)

    def _readable(self) -> None:
        """`src` has bytes: fill the pipe as far as it has room, passing them on to `dst` as it takes them."""
        for _ in range(_ROUNDS):
            room = min((self._blocked_fill if self._writing else self._capacity) - self._in_pipe, READ_SIZE)
            if room <= 0:
                break
            try:
                moved = os.splice(self._src, self._pipe_w, room, flags=_FLAGS)
            except BlockingIOError:
                break
            except OSError as error:
                self._stop()
                self._on_read_error(error)
                return
            if moved == 0:
                self._src_eof = True
                break
            self._in_pipe += moved
            self._moved_since_check = True
            self._on_moved(moved)
            if not self._writing and not self._flush():
                return
            if moved < room:
                break  # `src` had no more for now (a level-triggered poll calls again if it has)
        self._settle()

    def _writable(self) -> None:
        if self._flush():
            self._settle()

    def _settle(self) -> None:
        """Read `src` while the pipe has room; report the EOF once every byte before it is delivered."""
        if self._src_eof:
            self._set_reading(False)
            if self._in_pipe == 0:
                self._stop()
                self._on_eof()
        else:
            self._set_reading(self._in_pipe < (self._blocked_fill if self._writing else self._capacity))

    def _flush(self) -> bool:
        """Pass the pipe's bytes to `dst` as far as it takes them; wait for it to be writable if it takes no
        more. False when `dst` failed (the pump is stopped and the tunnel told)."""
        while self._in_pipe:
            try:
                written = os.splice(self._pipe_r, self._dst, self._in_pipe, flags=_FLAGS)
            except BlockingIOError:
                written = 0
            except OSError as error:
                self._stop()
                self._on_write_error(error)
                return False
            if written:
                self._in_pipe -= written
                self._written_since_check = True
            if self._in_pipe:
                # `dst` took less than offered: it is full (of unsent bytes, past TCP_NOTSENT_LOWAT).
                self._set_writing(True)
                return True
        self._set_writing(False)
        return True


# Pumps are checked this often: one that moved nothing since the last check is closed (a direction keeps
# its pipe for 1-2 s after a burst, so a burst that resumes soon does not pay for a new one), and one whose
# destination took nothing for two checks is handed back with what it holds.
CHECK_INTERVAL = 1.0
# After a pump could not have its descriptors (EMFILE, pipe quota), tunnels stay on the Protocol relay
# this long before trying again.
RETRY_AFTER = 1.0
# Pumps at once, for all tunnels: each pipe's pages count against the per-user pipe quota
# (fs.pipe-user-pages-soft, 64 MiB by default), which the node's root user shares with every other root
# container. 64 pipes of 256 KiB take a quarter of it; bulk tunnels beyond that use the Protocol relay.
MAX_PUMPS = 64


class PumpHost(Protocol):
    """What a tunnel offers the pumps of its two directions (`up`: client -> gateway)."""

    up_pump: SplicePump | None
    down_pump: SplicePump | None

    @property
    def peer(self) -> tuple[str, int] | None: ...

    def pump_moved(self, up: bool, count: int) -> None: ...
    def pump_eof(self, up: bool) -> None: ...
    def pump_failed(self, up: bool, source: bool) -> None: ...
    def pump_released(self, up: bool, leftover: bytes) -> None: ...


def _log(host: PumpHost, up: bool, what: str) -> None:
    if log.isEnabledFor(logging.DEBUG):
        direction = "client -> gateway" if up else "gateway -> client"
        log.debug("tunnel from %s: %s %s", format_peer(host.peer), direction, what)


class Splicer:
    """Moves tunnel directions onto pumps and back, for all tunnels of a listener: the hand-off happens
    only at a clean point (nothing buffered for the destination, neither connection closing), at most
    MAX_PUMPS at once; every CHECK_INTERVAL quiet pumps are handed back, and stalled ones (a destination
    that stopped reading) with the few bytes they hold; a failure to get descriptors backs off for
    RETRY_AFTER."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, unsent_limit: int = 0, max_pumps: int = MAX_PUMPS
    ) -> None:
        self.loop = loop
        self.unsent_limit = unsent_limit
        self.max_pumps = max_pumps
        self.pumps = 0
        self.retry_at = 0.0
        self.pumping: set[PumpHost] = set()
        self._check: asyncio.TimerHandle | None = None

    def start(self, host: PumpHost, up: bool, src: asyncio.Transport, dst: asyncio.Transport) -> None:
        """Carry `src` -> `dst` (one direction of `host`) with a pump from now on, if it can be done now."""
        # The Protocol relay has nothing buffered for `dst`, so no byte can pass another.
        if (
            dst.get_write_buffer_size()
            or dst.is_closing()
            or src.is_closing()
            or self.pumps >= self.max_pumps
        ):
            return
        loop = self.loop
        if loop.time() < self.retry_at:
            return
        try:
            pump = SplicePump.open(
                loop, src, dst,
                lambda count: host.pump_moved(up, count),
                lambda: host.pump_eof(up),
                lambda error: host.pump_failed(up, True),
                lambda error: host.pump_failed(up, False),
                self.unsent_limit,
            )  # fmt: skip
        except OSError as error:  # out of descriptors or pipe quota: the Protocol relay goes on
            self.retry_at = loop.time() + RETRY_AFTER
            log.warning(
                "no splice pump for a bulk tunnel (%s); relaying through the event loop for now", error
            )
            return
        src.pause_reading()  # the pump reads it from now on
        pump.start()
        self.pumps += 1
        if up:
            host.up_pump = pump
        else:
            host.down_pump = pump
        _log(host, up, "on a splice pump")
        self.pumping.add(host)
        if self._check is None:
            self._check = loop.call_later(CHECK_INTERVAL, self._check_pumps)

    def _check_pumps(self) -> None:
        self._check = None
        for host in list(self.pumping):
            for up in (True, False):
                pump = host.up_pump if up else host.down_pump
                if pump is None:
                    continue
                verdict = pump.check()
                if verdict is None:
                    continue
                leftover = pump.drain()
                self.pumps -= 1
                if up:
                    host.up_pump = None
                else:
                    host.down_pump = None
                _log(
                    host,
                    up,
                    "back on the event loop" + (" (its destination stopped reading)" if leftover else ""),
                )
                host.pump_released(up, leftover)
            if host.up_pump is None and host.down_pump is None:
                self.pumping.discard(host)
        if self.pumping:
            self._check = self.loop.call_later(CHECK_INTERVAL, self._check_pumps)

    def stop(self, host: PumpHost) -> None:
        """Close both pumps of `host` (before its transports close: a pump's duplicate descriptors would
        keep the sockets open)."""
        for pump in (host.up_pump, host.down_pump):
            if pump is not None:
                pump.close()
                self.pumps -= 1
        host.up_pump = host.down_pump = None
        self.pumping.discard(host)
