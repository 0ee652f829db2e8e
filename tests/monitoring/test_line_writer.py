"""The access log's writer thread: records become lines there, reach the stream in order, all of them at
stop, and a stream that cannot keep up costs dropped lines (the oldest, counted exactly), not memory."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from apiproxy.monitoring.line_writer import LineWriter


def test_lines_in_order_and_flushed_at_stop() -> None:
    stream = io.StringIO()
    writer = LineWriter(stream)
    writer.start()
    for n in range(1000):
        writer.write(f"line {n}\n")
    writer.stop()
    assert stream.getvalue() == "".join(f"line {n}\n" for n in range(1000))


def test_a_full_pipe_never_blocks_the_caller_and_the_queue_is_bounded() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    writer = LineWriter(stream, max_queued=100)
    writer.start()
    big = "x" * (1 << 20) + "\n"  # more than the pipe holds: the thread blocks in write()
    received: list[bytes] = []
    try:
        writer.write(big)
        while writer._records:
            time.sleep(0.01)
        time.sleep(0.1)
        started = time.monotonic()
        for n in range(1000):
            writer.write(f"{n}\n")
        assert time.monotonic() - started < 0.5  # never waited for the pipe
        assert writer.dropped == 900
    finally:
        reader = threading.Thread(
            target=lambda: received.extend(iter(lambda: os.read(read_end, 1 << 16), b""))
        )
        reader.start()  # the log shipper reads again
        writer.stop()
        stream.close()
        reader.join(10)
        os.close(read_end)
    lines = b"".join(received).decode().splitlines()
    assert lines[0] == big.strip()
    assert lines[1:] == [str(n) for n in range(900, 1000)]  # the newest kept


class _Refusing(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("stdout closed")


def test_every_dropped_line_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    writer = LineWriter(_Refusing(), max_queued=10)
    for n in range(25):  # 15 pushed out of the queue on the loop's side
        writer.write(f"{n}\n")
    writer.flush()  # the 10 left fail to write, on the writer's side
    writer.write("late\n")
    writer.flush()
    reported = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert reported == [
        "access log: 25 lines dropped (stdout too slow or closed)",
        "access log: 1 lines dropped (stdout too slow or closed)",
    ]
    assert (writer.queue_dropped, writer.write_failed, writer.reported) == (15, 11, 26)


def test_records_are_rendered_on_the_writer_thread_a_batch_at_a_time() -> None:
    stream = io.StringIO()
    threads: set[str] = set()
    batches: list[int] = []

    def render(batch: list[int]) -> str:
        threads.add(threading.current_thread().name)
        batches.append(len(batch))
        return "".join(f"record {n}\n" for n in batch)

    writer = LineWriter(stream, render)
    for n in range(500):
        writer.write(n)  # before the thread starts: one batch
    writer.start()
    writer.stop()
    assert stream.getvalue() == "".join(f"record {n}\n" for n in range(500))
    assert threads == {"apiproxy-access-log"} and batches == [500]


def test_a_failing_format_loses_its_batch_says_so_once_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()

    def render(batch: list[str]) -> str:
        if "bad\n" in batch:
            raise ValueError("a bug in a format")
        return "".join(batch)

    writer = LineWriter(stream, render)
    for batch in (["bad\n", "lost\n"], ["bad\n"], ["good\n"]):
        for line in batch:
            writer.write(line)
        writer.flush()
    assert stream.getvalue() == "good\n"
    assert writer.write_failed == 3
    failures = [r for r in caplog.records if r.getMessage() == "access log: a line could not be written"]
    assert len(failures) == 1 and failures[0].exc_info is not None
