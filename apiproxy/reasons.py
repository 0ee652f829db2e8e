"""Why a tunnel ended, and why a connection was refused: the one place these are spelled.

Every tunnel ends with exactly one `Reason`, set by its first cause. The values are the `reason` label of
`apiproxy_tunnels_closed_total`, the log's wording and the access log's RESPONSE_FLAGS key; the tables
below say what each means to the metrics, the access log and `apiproxy tunnel`'s start-up probe, so adding
a reason is a line here, not a hunt through the tree.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Both directions ended by EOF, or one side closed cleanly after the relay began.
    COMPLETED = "completed"
    # --- the client ---
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"  # connected and sent nothing (no gateway was dialled)
    DOWNSTREAM_CLOSED_EARLY = "downstream_closed_early"  # left before the gateway accepted
    DOWNSTREAM_RESET = "downstream_reset"
    # --- reaching the gateway (the dialer) ---
    DNS_FAILURE = "dns_failure"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    CONNECT_ERROR = "connect_error"
    # --- the gateway's CONNECT answer (the handshake) ---
    ANSWER_TIMEOUT = "answer_timeout"
    GATEWAY_REJECTED = "gateway_rejected"  # a final answer other than 2xx
    CLOSED_BEFORE_ANSWER = "closed_before_answer"
    MALFORMED_ANSWER = "malformed_answer"
    ANSWER_TOO_LARGE = "answer_too_large"
    # --- the gateway after its 2xx ---
    UPSTREAM_CLOSED = "upstream_closed"  # closed while the client was still sending
    UPSTREAM_RESET = "upstream_reset"
    # --- the proxy's own limits ---
    IDLE_TIMEOUT = "idle_timeout"
    DRAIN_TIMEOUT = "drain_timeout"
    # A bug in apiproxy ended the tunnel (logged with a traceback); never expected.
    INTERNAL_ERROR = "internal_error"

    @property
    def outcome(self) -> str:
        """The `outcome` label: success or failure."""
        return "success" if self is Reason.COMPLETED else "failure"


class Refusal(StrEnum):
    """Why a client connection was closed at accept, before it became a tunnel. (A draining process still
    admits: on a node-local VIP nothing would steer the connection elsewhere.)"""

    OVERFLOW = "overflow"  # over --max-connections (or the descriptors there are)
    SOURCE_LIMIT = "source_limit"  # over --max-connections-per-source for its source address


# The gateway was never reached over TCP (Envoy still samples its upstream connection length for these).
CONNECT_FAILURES = frozenset({Reason.CONNECT_REFUSED, Reason.CONNECT_TIMEOUT, Reason.CONNECT_ERROR})

# Setup failed before the relay began: the client is told with a plain close and its reason logged.
SETUP_FAILURES = CONNECT_FAILURES | {
    Reason.DNS_FAILURE,
    Reason.ANSWER_TIMEOUT,
    Reason.GATEWAY_REJECTED,
    Reason.CLOSED_BEFORE_ANSWER,
    Reason.MALFORMED_ANSWER,
    Reason.ANSWER_TOO_LARGE,
}

# Envoy's RESPONSE_FLAGS in the access log for the same failures (UF,URX: no usable gateway connection;
# UH: no gateway address; UT: no CONNECT answer in time; UC: the gateway hung up). Others print "-".
RESPONSE_FLAGS: dict[Reason, str] = {
    Reason.GATEWAY_REJECTED: "UF,URX",
    Reason.CONNECT_REFUSED: "UF,URX",
    Reason.CONNECT_TIMEOUT: "UF,URX",
    Reason.CONNECT_ERROR: "UF,URX",
    Reason.CLOSED_BEFORE_ANSWER: "UF,URX",
    Reason.MALFORMED_ANSWER: "UF,URX",
    Reason.ANSWER_TOO_LARGE: "UF,URX",
    Reason.DNS_FAILURE: "UH",
    Reason.ANSWER_TIMEOUT: "UT",
    Reason.UPSTREAM_CLOSED: "UC",
    Reason.UPSTREAM_RESET: "UC",
}

# `apiproxy tunnel`'s start-up probe: a failure to reach the gateway, as (kind, what the user should check).
PROBE_HINTS: dict[Reason, tuple[str, str]] = {
    Reason.DNS_FAILURE: ("dns", "; check the host name in --upstream"),
    Reason.CONNECT_REFUSED: (
        "refused",
        ": nothing listens there; check the port in --upstream (the seed gateway takes CONNECT on port 8443)",
    ),
    Reason.CONNECT_TIMEOUT: ("unreachable", "; is the gateway reachable from here (VPN, firewall)?"),
    Reason.CONNECT_ERROR: ("unreachable", ""),
}
