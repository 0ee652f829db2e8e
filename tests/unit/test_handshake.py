"""The CONNECT handshake, driven with scripted bytes (no sockets)."""

from __future__ import annotations

import pytest

from apiproxy import handshake
from apiproxy.handshake import ConnectHandshake, HandshakeError, build_connect_request

OK = b"HTTP/1.1 200 OK\r\ndate: Sun, 22 Nov 2026 06:00:00 GMT\r\nserver: envoy\r\n\r\n"


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    handshake._known_heads.clear()


def feed_all(chunks: list[bytes]) -> handshake.ConnectAnswer:
    parser = ConnectHandshake()
    answer = None
    for chunk in chunks:
        assert answer is None, "answer came before the last chunk"
        answer = parser.feed(chunk)
    assert answer is not None
    return answer


def test_request_bytes_name_authority_host_and_headers_in_order() -> None:
    request = build_connect_request(
        "api.bar.foo.internal.example.com.:443",
        [("X-Gardener-Destination", "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local"),
         ("Reversed-VPN", "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local")],
    )  # fmt: skip
    assert request == (
        b"CONNECT api.bar.foo.internal.example.com.:443 HTTP/1.1\r\n"
        b"Host: api.bar.foo.internal.example.com.:443\r\n"
        b"X-Gardener-Destination: outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local\r\n"
        b"Reversed-VPN: outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local\r\n\r\n"
    )


def test_200_in_one_read() -> None:
    answer = feed_all([OK])
    assert (answer.status, answer.accepted, answer.tunnel_data) == (200, True, b"")


def test_200_with_trailing_tunnel_bytes_keeps_them() -> None:
    answer = feed_all([OK + b"\x16\x03\x03 server hello"])
    assert answer.tunnel_data == b"\x16\x03\x03 server hello"


def test_a_200_with_more_tunnel_bytes_behind_it_than_a_head_may_have_is_not_too_large() -> None:
    # A gateway that answers and streams at once: one 256 KiB read holds the head and far more tunnel data
    # than the head limit. Only the head is bounded (this read was refused as answer_too_large before).
    data = bytes(range(256)) * 1024
    answer = ConnectHandshake().feed(OK + data)
    assert answer is not None and answer.status == 200 and answer.tunnel_data == data
    assert OK in handshake._known_heads  # and the head is cached as usual


@pytest.mark.parametrize("split", [1, 2, 7, 16, 40])
def test_answer_split_across_many_reads(split: int) -> None:
    data = OK + b"tail"
    chunks = [data[i : i + split] for i in range(0, len(OK), split)]
    # the last chunk carries the end of the head and the tunnel bytes
    chunks[-1] = data[(len(chunks) - 1) * split :]
    answer = feed_all(chunks)
    assert (answer.status, answer.tunnel_data) == (200, b"tail")


def test_a_head_seen_before_takes_the_cache_and_gives_the_same_answer() -> None:
    first = feed_all([OK + b"a"])
    assert OK in handshake._known_heads
    second = feed_all([OK + b"b"])
    assert (second.status, second.reason, second.tunnel_data) == (first.status, first.reason, b"b")


def test_split_answer_is_cached_too() -> None:
    feed_all([OK[:10], OK[10:]])
    assert OK in handshake._known_heads


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (
            b"HTTP/1.1 301 Moved Permanently\r\nlocation: https://api.example:443/\r\ncontent-length: 0\r\n\r\n",
            301,
        ),
        (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 9\r\n\r\nforbidden", 403),
        (b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 19\r\n\r\nno healthy upstream", 503),
    ],
)
def test_refusals_are_answers_that_are_not_accepted(head: bytes, status: int) -> None:
    answer = feed_all([head])
    assert (answer.status, answer.accepted, answer.tunnel_data) == (status, False, b"")


def test_informational_answer_before_the_final_one() -> None:
    answer = feed_all([b"HTTP/1.1 100 Continue\r\n\r\n", OK + b"x"])
    assert (answer.status, answer.tunnel_data) == (200, b"x")
    assert not any(head.startswith(b"HTTP/1.1 100") for head in handshake._known_heads)


def test_bare_lf_line_endings_are_h11s_call() -> None:
    answer = feed_all([b"HTTP/1.1 200 OK\nserver: x\n\nrest"])
    assert (answer.status, answer.tunnel_data) == (200, b"rest")
    assert not handshake._known_heads  # not cacheable: the fast path looks for CRLFCRLF


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    ],
)
def test_malformed_status_line(garbage: bytes) -> None:
    with pytest.raises(HandshakeError) as caught:
        ConnectHandshake().feed(garbage)
    assert caught.value.reason == "malformed_answer"


def test_header_block_over_the_limit() -> None:
    parser = ConnectHandshake(max_head_size=1024)
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    for _ in range(16):  # 17 + 16 * 62 = 1009 bytes: still under the limit
        assert parser.feed(b"x-filler: " + b"a" * 50 + b"\r\n") is None
    with pytest.raises(HandshakeError) as caught:
        parser.feed(b"x-filler: " + b"a" * 50 + b"\r\n")
    assert caught.value.reason == "answer_too_large"


def test_endless_header_without_line_end_over_the_limit() -> None:
    parser = ConnectHandshake(max_head_size=1024)
    with pytest.raises(HandshakeError) as caught:
        parser.feed(b"HTTP/1.1 200 OK\r\nx: " + b"a" * 4096)
    assert caught.value.reason == "answer_too_large"


def test_eof_before_headers() -> None:
    parser = ConnectHandshake()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nserv") is None
    with pytest.raises(HandshakeError) as caught:
        parser.feed_eof()
    assert caught.value.reason == "closed_before_answer"
    assert "21 bytes" in str(caught.value)


def test_eof_with_nothing_received() -> None:
    with pytest.raises(HandshakeError) as caught:
        ConnectHandshake().feed_eof()
    assert caught.value.reason == "closed_before_answer"
