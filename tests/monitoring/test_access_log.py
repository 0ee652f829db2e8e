"""The access-log formatter, without sockets: Envoy's format strings in, one line per tunnel out, written a
batch of records at a time (as the writer thread does), column by column."""

from __future__ import annotations

import pytest

from apiproxy.config import GARDENER_ACCESS_LOG_FORMAT
from apiproxy.monitoring.access_log import FormatError, TunnelRecord, compile_format
from apiproxy.reasons import Reason

RECORD = TunnelRecord(
    start_time=1_790_000_000.1234567,
    duration=0.0429,
    response_code=200,
    reason=Reason.COMPLETED,
    bytes_received=517,
    bytes_sent=4096,
    downstream_remote=("10.0.3.7", 51234),
    downstream_local=("240.168.102.23", 443),
    upstream_host=("10.250.0.9", 8443),
    upstream_cluster="kube_apiserver",
)


def test_gardeners_line() -> None:
    line = compile_format(GARDENER_ACCESS_LOG_FORMAT)([RECORD])
    assert line == '[2026-09-21T14:13:20.123Z] 200 - 517 rx 4096 tx 42ms "10.0.3.7:51234" "10.250.0.9:8443"\n'


def test_failures_carry_envoys_flags_and_missing_values_print_a_dash() -> None:
    refused = TunnelRecord(
        RECORD.start_time,
        0.001,
        301,
        Reason.GATEWAY_REJECTED,
        0,
        0,
        ("10.0.3.7", 1),
        None,
        ("10.250.0.9", 8443),
        "c",
    )
    assert compile_format("%RESPONSE_CODE% %RESPONSE_FLAGS%")([refused]) == "301 UF,URX"
    no_dns = TunnelRecord(RECORD.start_time, 0.001, 0, Reason.DNS_FAILURE, 0, 0, None, None, None, "c")
    fmt = "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST% %DOWNSTREAM_REMOTE_ADDRESS%"
    assert compile_format(fmt)([no_dns]) == "0 UH - -"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%:%DOWNSTREAM_REMOTE_PORT%", "10.0.3.7:51234"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "240.168.102.23:443"),
        ("%UPSTREAM_CLUSTER% %CONNECTION_TERMINATION_DETAILS%", "kube_apiserver completed"),
        ("%START_TIME(%s.%6f)%", "1790000000.123456"),  # digits cut, not rounded, as Envoy
        ("%START_TIME(%Y/%m/%d)%", "2026/09/21"),
        ("%UPSTREAM_CLUSTER:4%", "kube"),
        ("%BYTES_SENT:2% %DURATION:1%", "40 4"),  # numbers cut as text
        ("%START_TIME(%H:%M:%S.%3f|%6f|%f)%", "14:13:20.123|123456|123456717"),  # several fractions
        ("%START_TIME(%s)% %HOSTNAME:0%", "1790000000 "),
        ("100%% %DURATION%", "100% 42"),
        ("no commands", "no commands"),
    ],
)
def test_commands(fmt: str, expected: str) -> None:
    assert compile_format(fmt)([RECORD]) == expected


def test_ipv6_addresses_are_bracketed() -> None:
    # A socket address as the resolver gives it: IPv6 with flow info and scope id.
    record = TunnelRecord(
        1.0, 0, 200, Reason.COMPLETED, 0, 0, ("fd00::7", 443), None, ("2001:db8::1", 8443, 0, 0), "c"
    )
    assert (
        compile_format("%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST%")([record])
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


def test_a_batch_is_written_line_by_line_in_order_from_plain_tuples() -> None:
    """The event loop hands over plain tuples in TunnelRecord's order; records of a batch may lack
    addresses, cross a second, or round up into the next one."""
    render = compile_format(GARDENER_ACCESS_LOG_FORMAT)
    batch = [
        tuple(RECORD),
        tuple(RECORD._replace(start_time=1_790_000_000.9999999999, downstream_remote=None, bytes_sent=1)),
        tuple(RECORD._replace(start_time=1_790_000_001.5, upstream_host=("2001:db8::9", 8443, 0, 0))),
        tuple(RECORD._replace(start_time=1_790_000_000.0009, reason=Reason.UPSTREAM_RESET, response_code=0)),
    ]
    assert render(batch).splitlines() == [
        '[2026-09-21T14:13:20.123Z] 200 - 517 rx 4096 tx 42ms "10.0.3.7:51234" "10.250.0.9:8443"',
        '[2026-09-21T14:13:21.000Z] 200 - 517 rx 1 tx 42ms "-" "10.250.0.9:8443"',
        '[2026-09-21T14:13:21.500Z] 200 - 517 rx 4096 tx 42ms "10.0.3.7:51234" "[2001:db8::9]:8443"',
        '[2026-09-21T14:13:20.000Z] 0 UC 517 rx 4096 tx 42ms "10.0.3.7:51234" "10.250.0.9:8443"',
    ]
    # Each record alone gives its own line.
    assert "".join(render([record]) for record in batch) == render(batch)
    assert render([]) == ""
    assert compile_format("no commands\n")([RECORD, RECORD]) == "no commands\nno commands\n"


def test_address_texts_are_made_once_per_host_and_kept_within_bounds() -> None:
    render = compile_format("%DOWNSTREAM_REMOTE_ADDRESS% %UPSTREAM_HOST%\n")
    for batch in range(3):  # 3 x 3,000 client addresses, more than are kept: older ones are made again
        records = [
            tuple(
                RECORD._replace(
                    downstream_remote=(f"fd00::{batch}:{n:x}", n), upstream_host=("10.250.0.9", 8443)
                )
            )
            for n in range(3000)
        ]
        assert render(records).splitlines() == [
            f"[fd00::{batch}:{n:x}]:{n} 10.250.0.9:8443" for n in range(3000)
        ]
