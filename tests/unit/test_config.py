"""Option parsers: what they accept, and the one-line error for what they don't."""

from __future__ import annotations

import pytest

from apiproxy.config import (
    ConfigError,
    Endpoint,
    parse_authority,
    parse_connect_header_name,
    parse_duration,
    parse_endpoint,
    parse_header_name,
    parse_header_value,
    parse_int,
    parse_ip,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("1m", 60.0), ("1h", 3600.0), ("1h30m", 5400.0), ("7200", 7200.0),
     ("0.5", 0.5), ("1.5s", 1.5), ("100us", 1e-4), ("2m3s", 123.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration("--x", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5q", "", "s", "5 s", "-1s", "1s2", "inf", "nan", "1d"])
def test_bad_durations_name_option_value_and_expectation(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_duration("--idle-timeout", text)
    message = str(caught.value)
    assert message.startswith("--idle-timeout: expected ")
    assert repr(text) in message
    assert "\n" not in message


def test_zero_duration_only_where_allowed() -> None:
    with pytest.raises(ConfigError, match="greater than zero"):
        parse_duration("--connect-timeout", "0s")
    assert parse_duration("--drain-timeout", "0s", allow_zero=True) == 0


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("32768", 32768),
        ("32KiB", 32768),
        ("32Ki", 32768),
        ("32kb", 32000),
        ("1MiB", 1 << 20),
        ("2 MB", 2_000_000),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size("--buffer-size", text) == size


@pytest.mark.parametrize("text", ["32XB", "abc", "-1", "1.5KiB", ""])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--buffer-size: expected a size"):
        parse_size("--buffer-size", text)


def test_size_range() -> None:
    with pytest.raises(ConfigError, match="between 1024 and"):
        parse_size("--buffer-size", "10", minimum=1024)


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("api.bar.foo.internal.example.com.:8443", Endpoint("api.bar.foo.internal.example.com.", 8443)),
        ("127.0.0.1:443", Endpoint("127.0.0.1", 443)),
        ("[::1]:8443", Endpoint("::1", 8443)),
        ("[64:ff9b:1::f0a8:6617]:443", Endpoint("64:ff9b:1::f0a8:6617", 443)),
        ("localhost:1", Endpoint("localhost", 1)),
    ],
)
def test_endpoints(text: str, endpoint: Endpoint) -> None:
    assert parse_endpoint("--upstream", text) == endpoint


def test_endpoint_str_brackets_ipv6() -> None:
    assert str(Endpoint("::1", 443)) == "[::1]:443"
    assert str(Endpoint("10.96.0.2", 443)) == "10.96.0.2:443"


@pytest.mark.parametrize(
    "text", ["api.example", "api.example:0", "api.example:65536", "::1:443", "[::1", "[10.0.0.1]:443",
             "bad host:443", "a..b:443", "api.example:https", "[::1]x443", "-bad.example:1"],
)  # fmt: skip
def test_bad_endpoints(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--upstream: expected HOST:PORT"):
        parse_endpoint("--upstream", text)


def test_endpoint_default_port_and_ip_requirement() -> None:
    assert parse_endpoint("--x", "10.0.0.1", default_port=16910) == Endpoint("10.0.0.1", 16910)
    with pytest.raises(ConfigError, match="IP:PORT"):
        parse_endpoint("--metrics-address", "localhost:16910", require_ip=True)


def test_ip() -> None:
    assert str(parse_ip("--ip-address", "240.168.102.23")) == "240.168.102.23"
    with pytest.raises(ConfigError, match=r"^--ip-address: expected an IPv4 or IPv6 address, got '10.96.0'$"):
        parse_ip("--ip-address", "10.96.0")


@pytest.mark.parametrize("name", ["X-Gardener-Destination", "Reversed-VPN", "x_y", "A1!#$%&'*+-.^_`|~"])
def test_header_names(name: str) -> None:
    assert parse_header_name("--destination-header", name) == name


@pytest.mark.parametrize("name", ["", "X Y", "X:Y", "X\r\nY", "Ünicode", "(x)", "x\x00"])
def test_bad_header_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^--destination-header: expected an HTTP header name"):
        parse_header_name("--destination-header", name)


@pytest.mark.parametrize("name", ["X-Gardener-Destination", "Reversed-VPN", "X-Host", "Hostname", "Proxy"])
def test_connect_header_names(name: str) -> None:
    assert parse_connect_header_name("--destination-header", name) == name


@pytest.mark.parametrize(
    "name",
    ["Host", "host", "Content-Length", "CONTENT-LENGTH", "Transfer-Encoding", "Connection", "Upgrade", "TE",
     "Trailer", "Keep-Alive", "Expect", "HTTP2-Settings", "Proxy-Authorization", "proxy-connection",
     "Proxy-Authenticate"],
)  # fmt: skip
def test_connect_header_names_refuse_framing_and_hop_by_hop_names(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_connect_header_name("--destination-header", name)
    message = str(caught.value)
    assert message.startswith("--destination-header: expected a header name other than Host, Content-Length")
    assert message.endswith(f"got {name!r}") and "\n" not in message


def test_connect_header_names_are_tokens_first() -> None:
    with pytest.raises(ConfigError, match=r"^--destination-header: expected an HTTP header name"):
        parse_connect_header_name("--destination-header", "Host:")


@pytest.mark.parametrize(
    "value",
    [
        "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local",
        "shoot--foo--bar--kube-apiserver-socket",
        "a b",
    ],
)
def test_header_values(value: str) -> None:
    assert parse_header_value("--destination", value) == value


@pytest.mark.parametrize(
    "value",
    ["", " leading", "trailing ", "a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "caf\u00e9", "a\x7fb"],
)
def test_header_values_refuse_injection_and_controls(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--destination: expected a non-empty HTTP header value"):
        parse_header_value("--destination", value)


def test_authority() -> None:
    assert parse_authority("--connect-authority", "api.example.:443") == "api.example.:443"
    with pytest.raises(ConfigError, match=r"^--connect-authority: expected HOST:PORT"):
        parse_authority("--connect-authority", "api.example:443\r\nX: y")


def test_int_range() -> None:
    assert parse_int("--max-connections", "10000", minimum=1, maximum=10**6) == 10000
    for bad in ("0", "x", "1e3", "-5"):
        with pytest.raises(ConfigError, match=r"^--max-connections: expected an integer between 1 and"):
            parse_int("--max-connections", bad, minimum=1, maximum=10**6)
