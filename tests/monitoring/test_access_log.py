"""The access-log formatter, without sockets: Envoy's format strings in, one line per tunnel out."""

from __future__ import annotations

import pytest

from apiproxy.config import GARDENER_ACCESS_LOG_FORMAT
from apiproxy.monitoring.access_log import FormatError, TunnelRecord, compile_format

RECORD = TunnelRecord(
    start_time=1_790_000_000.1234567,
    duration=0.0429,
    response_code=200,
    reason="completed",
    bytes_received=517,
    bytes_sent=4096,
    downstream_remote=("10.0.3.7", 51234),
    downstream_local=("240.168.102.23", 443),
    upstream_host=("10.250.0.9", 8443),
    upstream_cluster="kube_apiserver",
)


def test_gardeners_line() -> None:
    line = compile_format(GARDENER_ACCESS_LOG_FORMAT)(RECORD)
    assert line == '[2026-09-21T14:13:20.123Z] 200 - 517 rx 4096 tx 42ms "10.0.3.7:51234" "10.250.0.9:8443"\n'


def test_failures_carry_envoys_flags_and_missing_values_print_a_dash() -> None:
    refused = TunnelRecord(
        RECORD.start_time,
        0.001,
        301,
        "gateway_rejected",
        0,
        0,
        ("10.0.3.7", 1),
        None,
        ("10.250.0.9", 8443),
        "c",
    )
    assert compile_format("%RESPONSE_CODE% %RESPONSE_FLAGS%")(refused) == "301 UF,URX"
    no_dns = TunnelRecord(RECORD.start_time, 0.001, 0, "dns_failure", 0, 0, None, None, None, "c")
    fmt = "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS%"
    assert compile_format(fmt)(no_dns) == "0 UH - -"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%DOWNSTREAM_REMOTE_PORT%", "10.0.3.7:51234"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "240.168.102.23:443"),
        ("%UPSTREAM_CLUSTER% %CONNECTION_TERMINATION_DETAILS%", "kube_apiserver completed"),
        ("%START_TIME(%s.%6f)%", "1790000000.123456"),  # digits cut, not rounded, as Envoy
        ("%START_TIME(%Y/%m/%d)%", "2026/09/21"),
        ("%UPSTREAM_CLUSTER:4%", "kube"),
        ("100%% %DURATION%", "100% 42"),
        ("no commands", "no commands"),
    ],
)
def test_commands(fmt: str, expected: str) -> None:
    assert compile_format(fmt)(RECORD) == expected


def test_ipv6_addresses_are_bracketed() -> None:
    record = TunnelRecord(1.0, 0, 200, "completed", 0, 0, ("fd00::7", 443), None, ("2001:db8::1", 8443), "c")
    assert (
        compile_format("%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST%")(record)
        == "[fd00::7]:443 [2001:db8::1]:8443"
    )


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("%REQ(:PATH)%", "unknown or unsupported command %REQ%"),
        ("%NOT_A_COMMAND%", "unknown or unsupported command"),
        ("%DURATION", "malformed command"),
        ("%BYTES_SENT(x)%", "takes no argument"),
    ],
)
def test_what_it_cannot_write_is_refused(fmt: str, message: str) -> None:
    with pytest.raises(FormatError, match=message.replace("(", r"\(").replace("%", "%")):
        compile_format(fmt)
