"""SplicePump on its own: two local socket pairs and a pipe on a uvloop loop, no proxy process.

writer ==(a)== pump src ... pump dst ==(b)== reader
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import uvloop

from apiproxy.splice import SplicePump, _limit_unsent


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    writer: socket.socket  # feeds the pump's source
    reader: socket.socket  # drains the pump's destination
    pump: SplicePump
    fds: tuple[int, int, int, int]
    moved: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def run_until(self, check: object, timeout: float = 5.0) -> None:
        async def wait() -> None:
            async with asyncio.timeout(timeout):
                while not check():  # type: ignore[operator]
                    await asyncio.sleep(0.005)

        self.loop.run_until_complete(wait())


@pytest.fixture
def rig() -> Iterator[Rig]:
    loop = uvloop.new_event_loop()
    writer, src = socket.socketpair()
    dst, reader = socket.socketpair()
    for sock in (src, dst):
        sock.setblocking(False)
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fds = (src.detach(), dst.detach(), pipe_r, pipe_w)
    moved: list[int] = []
    events: list[str] = []
    pump = SplicePump(
        loop, fds, fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ), moved.append, lambda: events.append("eof"),
        lambda error: events.append(f"read error {error.errno}"),
        lambda error: events.append(f"write error {error.errno}"),
    )  # fmt: skip
    rig = Rig(loop, writer, reader, pump, fds, moved, events)
    try:
        yield rig
    finally:
        pump.close()
        writer.close()
        reader.close()
        loop.close()


def test_bytes_arrive_in_order_and_eof_comes_after_the_last_byte(rig: Rig) -> None:
    data = os.urandom(3 * 1024 * 1024)
    rig.pump.start()
    rig.writer.setblocking(False)
    received = bytearray()
    sent = 0

    def step() -> bool:
        nonlocal sent
        if sent < len(data):
            with contextlib.suppress(BlockingIOError):
                sent += rig.writer.send(data[sent : sent + 65536])
            if sent == len(data):
                rig.writer.shutdown(socket.SHUT_WR)
        with contextlib.suppress(BlockingIOError):
            received.extend(rig.reader.recv(1 << 20, socket.MSG_DONTWAIT))
        return "eof" in rig.events

    rig.run_until(step)
    assert bytes(received) == data
    assert sum(rig.moved) == len(data)
    assert rig.events == ["eof"]  # and no error


def test_a_full_destination_stops_reading_the_source_then_it_resumes(rig: Rig) -> None:
    rig.pump.start()
    rig.writer.setblocking(False)
    block = b"x" * 65536
    # Nobody reads `reader`: the destination socket fills, the pump stops reading, the source socket
    # fills, and at last the writer is pushed back.
    written = pushed_back = 0
    while pushed_back < 20:
        try:
            written += rig.writer.send(block)
            pushed_back = 0
        except BlockingIOError:
            pushed_back += 1
        rig.loop.run_until_complete(asyncio.sleep(0.005))
    moved = sum(rig.moved)
    assert moved < written  # bytes wait in the source socket, unread
    rig.loop.run_until_complete(asyncio.sleep(0.1))
    assert sum(rig.moved) == moved  # and stay there while the destination is full
    rig.pump.check()
    assert rig.pump.check() != "quiet"  # bytes wait in the pipe too: not safe to hand back
    received = 0

    def drain() -> bool:
        nonlocal received
        with contextlib.suppress(BlockingIOError):
            received += len(rig.reader.recv(1 << 20, socket.MSG_DONTWAIT))
        return received == written

    rig.run_until(drain)
    assert sum(rig.moved) == written
    assert rig.events == []


def test_quiet_only_after_a_check_without_traffic(rig: Rig) -> None:
    rig.pump.start()
    rig.writer.sendall(b"hello")
    rig.run_until(lambda: sum(rig.moved) == 5)
    assert rig.pump.check() is None  # moved since the last check
    assert rig.pump.check() == "quiet"  # nothing since
    assert rig.reader.recv(5) == b"hello"


def test_a_broken_destination_is_reported_as_a_write_error(rig: Rig) -> None:
    rig.pump.start()
    rig.reader.close()
    rig.writer.sendall(b"y" * 4096)
    rig.run_until(lambda: bool(rig.events))
    assert rig.events[0].startswith("write error")


def test_close_closes_the_pumps_descriptors(rig: Rig) -> None:
    rig.pump.start()
    rig.pump.close()
    for fd in rig.fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
    rig.pump.close()  # twice is fine


def test_the_destination_takes_no_more_than_the_unsent_limit() -> None:
    """TCP_NOTSENT_LOWAT on the destination: the pump keeps at most `unsent_limit` bytes waiting in its send
    queue (the kernel stops taking bytes beyond it) instead of as much as autotuning allows."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        _limit_unsent(client.fileno(), 32768)
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == 32768
        client.setblocking(False)
        sent = 0
        with contextlib.suppress(BlockingIOError):
            while sent < 64 * 1024 * 1024:
                sent += client.send(b"x" * 65536)
        # The receiver never reads: what it has not taken waits, bounded by its window and the limit
        # (give or take one 64 KiB segment), far below what autotuning lets the send queue grow to.
        assert sent < 1024 * 1024, sent  # without the limit: ~3.9 MiB here
    finally:
        for sock in (client, server, listener):
            sock.close()


def test_a_destination_that_stops_reading_stalls_the_pump_with_little_in_its_pipe() -> None:
    """While the destination takes nothing, the pump fills its pipe only up to the blocked fill; two checks
    without progress make it "stalled", and `drain` gives back what it held, in order."""
    loop = uvloop.new_event_loop()
    writer, src = socket.socketpair()
    dst, reader = socket.socketpair()
    for sock in (src, dst, writer):
        sock.setblocking(False)
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    moved: list[int] = []
    pump = SplicePump(loop, (src.detach(), dst.detach(), pipe_r, pipe_w), 256 * 1024, moved.append,
                      lambda: None, lambda e: None, lambda e: None, blocked_fill=32 * 1024)  # fmt: skip
    try:
        pump.start()
        data = os.urandom(8 * 1024 * 1024)
        sent = 0
        for _ in range(200):
            with contextlib.suppress(BlockingIOError):
                sent += writer.send(data[sent : sent + 65536])
            loop.run_until_complete(asyncio.sleep(0.002))
        verdicts = [pump.check() for _ in range(3)]
        assert verdicts[-1] == "stalled", verdicts
        received = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := reader.recv(1 << 20, socket.MSG_DONTWAIT):
                received += chunk
        leftover = pump.drain()
        assert 0 < len(leftover) <= 64 * 1024  # one read (READ_SIZE); nothing more was read once blocked
        assert received + leftover == data[: len(received) + len(leftover)]
    finally:
        pump.close()
        writer.close()
        reader.close()
        loop.close()
