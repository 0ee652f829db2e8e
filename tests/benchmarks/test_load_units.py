"""The load generator's parts that need no sockets: how an answer is known to be complete, how failures
are named, how a schedule is shared out over shards and workers, how recorders merge and round-trip, and
what `load merge` refuses."""

from __future__ import annotations

import errno
import json
import ssl
from pathlib import Path
from typing import Any

import h11
import pytest

from apiproxy.config import ConfigError
from apiproxy.handshake import HandshakeError
from benchmarks.load.plan import Plan, Scenario, Shard, Target
from benchmarks.load.record import Recorder
from benchmarks.load.report import document
from benchmarks.load.shards import MergeError, merge, parse_shard
from benchmarks.load.tunnel import Conversation, Failure, PeerClosed, failure_kind

REQUEST = h11.Request(method="GET", target="/version", headers=[("Host", "kubernetes.default.svc")])
TARGET = Target("node", "127.0.0.1", 443, "127.0.0.1")


def test_an_http_answer_is_complete_at_the_end_of_its_body_however_it_is_split() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    for cut in range(1, len(answer)):
        conversation = Conversation(REQUEST)
        conversation.begin()
        assert conversation.feed(answer[:cut]) is False, cut
        assert conversation.feed(answer[cut:]) is True, cut
        assert conversation.status == 200


def test_a_chunked_answer_and_the_next_one_on_the_same_tunnel() -> None:
    conversation = Conversation(REQUEST)
    conversation.begin()
    assert not conversation.feed(
        b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    assert conversation.feed(b"0\r\n\r\n")
    assert conversation.status == 503
    conversation.begin()
    assert conversation.feed(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert conversation.status == 404


def test_an_answer_delimited_by_the_close_is_complete_at_the_close() -> None:
    conversation = Conversation(REQUEST)
    conversation.begin()
    assert not conversation.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody")
    assert conversation.feed_eof()


def test_an_echo_backend_answers_with_the_request_itself() -> None:
    conversation = Conversation(REQUEST)
    request = conversation.begin()
    assert request.startswith(b"GET /version HTTP/1.1\r\n")
    assert not conversation.feed(request[:3])
    assert not conversation.feed(request[3:-1])
    assert conversation.feed(request[-1:])
    assert conversation.status is None
    assert not conversation.feed_eof()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "refused"),
        (ConnectionResetError(errno.ECONNRESET, "reset"), "reset"),
        (ConnectionResetError("Connection lost"), "reset"),
        (OSError(errno.EHOSTUNREACH, "no route"), "unreachable"),
        (OSError(errno.EADDRNOTAVAIL, "no port"), "no_local_port"),
        (OSError(errno.EMFILE, "too many"), "no_descriptor"),
        (OSError(errno.EACCES, "denied"), "eacces"),
        (TimeoutError(), "timeout"),
        (PeerClosed("closed"), "closed"),
        (ssl.SSLCertVerificationError("certificate verify failed"), "tls_error"),
        (ssl.SSLEOFError("EOF"), "closed"),
        (HandshakeError("closed_before_answer", "closed"), "closed"),
        (HandshakeError("malformed_answer", "bad"), "bad_connect_answer"),
        (Failure("http_503", "connect_answer", "503"), "http_503"),
    ],
)
def test_failures_are_named_by_kind(error: BaseException, kind: str) -> None:
    assert failure_kind(error) == kind


@pytest.mark.parametrize(("shards", "workers"), [(1, 1), (1, 3), (2, 2), (3, 4)])
def test_shards_and_workers_run_every_unit_of_the_schedule_once(shards: int, workers: int) -> None:
    total = 1001
    seen: list[int] = []
    for index in range(shards):
        plan = Plan(TARGET, Scenario("storm", count=total), workers, Shard(index, shards))
        for worker in range(workers):
            seen += plan.share(total, worker)
    assert sorted(seen) == list(range(total))


@pytest.mark.parametrize("value", ["1/1", "2/2", "-1/2", "a/b", "1", "0/10001"])
def test_a_bad_shard_is_refused_naming_the_form(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--shard: expected I/N"):
        parse_shard("--shard", value)
    assert parse_shard("--shard", "3/4") == Shard(3, 4)


def _recorder(ok: int, latency_s: float) -> Recorder:
    recorder = Recorder("tunnels")
    for i in range(ok):
        recorder.start(i * 0.01, 0.0001)
        recorder.phase("total", latency_s + i * 1e-5, i * 0.01 + latency_s)
        recorder.ok("tunnels", i * 0.01 + latency_s)
    recorder.fail("tunnels", "refused", "connect", "refused", 0.5)
    return recorder


def test_a_recorder_round_trips_through_json_and_merges_exactly() -> None:
    one, other = _recorder(150, 0.002), _recorder(70, 0.9)
    copy = Recorder.from_json(json.loads(json.dumps(one.to_json())))
    assert copy.to_json() == one.to_json()
    copy.merge(other)
    assert copy.tally.ok == 220
    assert dict(copy.tally.failed) == {"refused": 2}
    assert copy.phases["total"].count == 220
    assert sum(second.ok for second in copy.seconds.values()) == 220
    assert copy.phases["total"].max == other.phases["total"].max


def _shard_document(tmp_path: Path, name: str, scenario: Scenario, shard: str) -> Path:
    plan = Plan(TARGET, scenario, 1)
    entry: dict[str, Any] = {"shard": shard, "asked_rate": None, "achieved_rate": 10.0, "gbit_per_s": None,
                             "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 1.0, "interrupted": False,
                             "errors": [], "generator": {"reasons": [], "workers": []}}  # fmt: skip
    results = document({**plan.as_dict(), "shard": shard}, _recorder(10, 0.01), [entry])
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(results))
    return tmp_path / name


def test_merge_adds_shards_and_names_the_missing_ones(tmp_path: Path) -> None:
    storm = Scenario("storm", count=40)
    merged = merge(
        [_shard_document(tmp_path, "a", storm, "0/4"), _shard_document(tmp_path, "b", storm, "2/4")]
    )
    assert merged["ok"] == 20
    assert merged["achieved_rate"] == 20.0
    assert merged["missing_shards"] == ["1/4", "3/4"]


def test_merge_refuses_what_is_not_shards_of_one_run(tmp_path: Path) -> None:
    first = _shard_document(tmp_path, "a", Scenario("storm", count=40), "0/2")
    with pytest.raises(MergeError, match="only shards of one run merge"):
        merge([first, _shard_document(tmp_path, "b", Scenario("storm", count=41), "1/2")])
    with pytest.raises(MergeError, match="given more than once"):
        merge([first, first])
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(MergeError, match=r"not a results\.json"):
        merge([first, tmp_path / "junk.json"])
    with pytest.raises(MergeError, match="cannot read it"):
        merge([tmp_path / "nowhere"])
