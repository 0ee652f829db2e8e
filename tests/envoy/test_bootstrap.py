"""The bootstrap reader without sockets: Gardener's example maps to the expected configuration, each
construct apiproxy cannot honour is refused naming its config path, and YAML, JSON and camelCase agree."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from apiproxy.config import (
    GARDENER_ACCESS_LOG_FORMAT,
    DNSFamily,
    Endpoint,
    ListenerConfig,
    MonitoringConfig,
    ProxyConfig,
    TunnelConfig,
    UpstreamProtocol,
)
from apiproxy.envoy.bootstrap import (
    UNLIMITED_CONNECTIONS,
    BootstrapError,
    bootstrap_from_document,
    read_bootstrap,
)

from .render import EXAMPLE, cluster_of, example, listener_of, tcp_proxy_of, tunneling_of

Document = dict[str, Any]

EXPECTED = ProxyConfig(
    listener=ListenerConfig(listen=Endpoint("240.168.102.23", 443), max_connections=10000),
    tunnel=TunnelConfig(
        upstream=Endpoint("api.bar.foo.internal.example.com.", 8443),
        connect_authority="api.bar.foo.internal.example.com.:443",
        connect_headers=(
            ("X-Gardener-Destination", "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local"),
        ),
        upstream_protocol=UpstreamProtocol.CONNECT,
        dns_family=DNSFamily.V4,
        connect_timeout=5.0,
        idle_timeout=3600.0,
        tcp_keepalive_time=7200.0,
        tcp_keepalive_interval=55.0,
        buffer_size=32768,
    ),
    vip=None,
    monitoring=MonitoringConfig(
        addresses=(Endpoint("0.0.0.0", 16910), Endpoint("::", 16910)),
        access_log_format=GARDENER_ACCESS_LOG_FORMAT,
        envoy_cluster_name="kube_apiserver",
        envoy_stat_prefix="kube_apiserver",
    ),
)


def test_gardeners_example_maps_to_the_expected_configuration() -> None:
    bootstrap = read_bootstrap(EXAMPLE.read_text())
    assert bootstrap.config == EXPECTED
    assert bootstrap.admin == "pipe /etc/admin-uds/admin.socket"
    # What is read but has no effect is listed, so the log can say so.
    assert "static_resources.clusters[0].lb_policy" in bootstrap.ignored
    assert "admin.access_log" in bootstrap.ignored


def test_yaml_json_and_camel_case_agree() -> None:
    from_yaml = read_bootstrap(EXAMPLE.read_text()).config
    from_json = read_bootstrap(json.dumps(example())).config

    def camel(value: Any, inside_struct: bool = False) -> Any:
        if isinstance(value, dict):
            return {
                (key if inside_struct else _camel(key)): camel(item, inside_struct or key == "static_layer")
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [camel(item, inside_struct) for item in value]
        return value

    from_camel = read_bootstrap(yaml.safe_dump(camel(example()))).config
    assert from_yaml == from_json == from_camel == EXPECTED


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _edit(change: Callable[[Document], None]) -> Document:
    document = copy.deepcopy(example())
    change(document)
    return document


TLS = {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    },
}
L0 = "static_resources.listeners[0]"
TCP = f"{L0}.filter_chains[0].filters[0].typed_config"
C0 = "static_resources.clusters[0]"

REFUSALS: list[tuple[str, Callable[[Document], None], str]] = [
    ("cluster TLS", lambda d: cluster_of(d).update(transport_socket=TLS), f"{C0}.transport_socket: not supported (TLS to the gateway)"),
    ("listener TLS", lambda d: listener_of(d)["filter_chains"][0].update(transport_socket=TLS), f"{L0}.filter_chains[0].transport_socket: not supported"),
    ("HTTP/2 tunnel", lambda d: cluster_of(d).update(http2_protocol_options={}), f"{C0}.http2_protocol_options: not supported (HTTP/2"),
    ("HTTP/2 by extension", lambda d: cluster_of(d).update(typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}), f"{C0}.typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions: not supported (HTTP/2"),
    ("another network filter", lambda d: listener_of(d)["filter_chains"][0]["filters"].insert(0, {"name": "envoy.filters.network.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "x"}}), f"{L0}.filter_chains[0].filters: expected exactly one network filter"),
    ("EDS cluster", lambda d: cluster_of(d).update(type="EDS"), f"{C0}.type: EDS: not supported"),
    ("two endpoints", lambda d: cluster_of(d)["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        copy.deepcopy(cluster_of(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0])), f"{C0}.load_assignment: expected exactly one endpoint"),
    ("POST tunnel", lambda d: tunneling_of(d).update(use_post=True), f"{TCP}.tunneling_config.use_post: true: not supported"),
    ("hostname operator", lambda d: tunneling_of(d).update(hostname="%REQUESTED_SERVER_NAME%:443"), f"{TCP}.tunneling_config.hostname: command operators"),
    ("hostname without port", lambda d: tunneling_of(d).update(hostname="api.example.com"), f"{TCP}.tunneling_config.hostname: expected HOST:PORT"),
    ("header injection", lambda d: tunneling_of(d)["headers_to_add"][0]["header"].update(value="a\r\nX-Evil: 1"), f"{TCP}.tunneling_config.headers_to_add[0].header.value: a non-empty HTTP header value"),
    ("host header", lambda d: tunneling_of(d)["headers_to_add"][0]["header"].update(key="Host"), f"{TCP}.tunneling_config.headers_to_add[0].header.key: host cannot be overridden"),
    ("framing header", lambda d: tunneling_of(d)["headers_to_add"][0]["header"].update(key="Content-Length"), f"{TCP}.tunneling_config.headers_to_add[0].header.key: a header name other than Host, Content-Length"),
    ("no tunnel, no PROXY", lambda d: tcp_proxy_of(d).pop("tunneling_config"), f"{TCP}.tunneling_config: required"),
    ("weighted clusters", lambda d: tcp_proxy_of(d).update(weighted_clusters={"clusters": [{"name": "kube_apiserver", "weight": 1}]}), f"{TCP}.weighted_clusters: not supported"),
    ("max duration", lambda d: tcp_proxy_of(d).update(max_downstream_connection_duration="10s"), f"{TCP}.max_downstream_connection_duration: not supported"),
    ("missing cluster", lambda d: tcp_proxy_of(d).update(cluster="nowhere"), f"{TCP}.cluster: no cluster named 'nowhere'"),
    ("listener filters", lambda d: listener_of(d).update(listener_filters=[{"name": "envoy.filters.listener.tls_inspector"}]), f"{L0}.listener_filters: not supported"),
    ("filter chain match", lambda d: listener_of(d)["filter_chains"][0].update(filter_chain_match={"server_names": ["a"]}), f"{L0}.filter_chains[0].filter_chain_match: not supported"),
    ("json access log", lambda d: tcp_proxy_of(d)["access_log"][0]["typed_config"].update(log_format={"json_format": {"a": "%START_TIME%"}}), f"{TCP}.access_log[0].typed_config.log_format.json_format: not supported"),
    ("access log to a file", lambda d: tcp_proxy_of(d)["access_log"][0].update(typed_config={
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/var/log/x"}), f"{TCP}.access_log[0].typed_config.path: '/var/log/x': not supported"),
    ("access log command", lambda d: tcp_proxy_of(d)["access_log"][0]["typed_config"]["log_format"]["text_format_source"].update(inline_string="%REQ(:PATH)%\n"),
     f"{TCP}.access_log[0].typed_config.log_format.text_format_source.inline_string:"),
    ("access log filter", lambda d: tcp_proxy_of(d)["access_log"][0].update(filter={"duration_filter": {}}), f"{TCP}.access_log[0].filter: not supported"),
    ("xDS", lambda d: d.update(dynamic_resources={"lds_config": {}}), "dynamic_resources: not supported (xDS)"),
    ("DNS resolvers", lambda d: cluster_of(d).update(dns_resolvers=[{"socket_address": {"address": "1.1.1.1", "port_value": 53}}]), f"{C0}.dns_resolvers: not supported"),
    ("health checks", lambda d: cluster_of(d).update(health_checks=[{"timeout": "1s"}]), f"{C0}.health_checks: not supported"),
    ("PROXY v1", lambda d: cluster_of(d).update(transport_socket={"name": "pp", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        "config": {"version": "V1"}}}), f"{C0}.transport_socket.typed_config.config.version: V1: not supported"),
    ("PROXY and CONNECT", lambda d: cluster_of(d).update(transport_socket={"name": "pp", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        "config": {"version": "V2"}}}), f"{C0}.transport_socket: a PROXY protocol header before a CONNECT"),
    ("metrics route to elsewhere", lambda d: listener_of(d, 1)["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"].append(
        {"match": {"prefix": "/"}, "route": {"cluster": "uds_admin"}}), f"{L0[:-3]}[1].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[2]: not supported"),
    ("admin path", lambda d: listener_of(d, 1)["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][1].update(
        match={"path": "/stats"}, route={"cluster": "uds_admin"}), "static_resources.listeners[1]...routes[1]: '/stats' → admin '/stats': not supported"),
    ("second tcp_proxy listener", lambda d: d["static_resources"]["listeners"].append(
        {**copy.deepcopy(listener_of(d)), "name": "again"}), "static_resources.listeners[2]: a second tcp_proxy listener"),
    ("additional address on the tunnel", lambda d: listener_of(d).update(additional_addresses=[{"address": {"socket_address": {"address": "::", "port_value": 443}}}]),
     f"{L0}.additional_addresses: not supported on the tcp_proxy listener"),
    ("listener on a name", lambda d: listener_of(d)["address"]["socket_address"].update(address="localhost"), f"{L0}.address.socket_address.address: expected an IP address"),
    ("listener port 0", lambda d: listener_of(d)["address"]["socket_address"].update(port_value=0), f"{L0}.address.socket_address.port_value: 0"),
    ("UDP listener", lambda d: listener_of(d)["address"]["socket_address"].update(protocol="UDP"), f"{L0}.address.socket_address.protocol: UDP: not supported"),
    ("transparent", lambda d: listener_of(d).update(transparent=True), f"{L0}.transparent: true: not supported"),
    ("unknown field", lambda d: listener_of(d)["address"]["socket_address"].update(bogus=1), f"{L0}.address.socket_address.bogus: unknown field"),
    ("bad duration", lambda d: cluster_of(d).update(connect_timeout="5m"), f"{C0}.connect_timeout: expected a duration in seconds"),
    ("bad DNS family", lambda d: cluster_of(d).update(dns_lookup_family="V5"), f"{C0}.dns_lookup_family: expected one of AUTO"),
    ("STATIC cluster on a name", lambda d: cluster_of(d).update(type="STATIC"), f"{C0}...: a STATIC cluster needs an IP address"),
    ("runtime limit", lambda d: d["layered_runtime"]["layers"][0]["static_layer"].update({"overload.global_downstream_max_connections": "many"}),
     "layered_runtime.static_layer.overload.global_downstream_max_connections: expected a positive integer"),
    ("disk runtime", lambda d: d["layered_runtime"]["layers"].append({"name": "disk", "disk_layer": {"symlink_root": "/x"}}), "layered_runtime.layers[1].disk_layer: not supported"),
    ("overload manager", lambda d: d.update(overload_manager={"refresh_interval": "1s"}), "overload_manager: not supported"),
    ("no listener", lambda d: d["static_resources"].update(listeners=[]), "static_resources.listeners: no listener with a tcp_proxy filter"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"), [(c, m) for _, c, m in REFUSALS], ids=[n for n, _, _ in REFUSALS]
)
def test_refused_constructs_name_their_config_path(change: Callable[[Document], None], message: str) -> None:
    with pytest.raises(BootstrapError) as caught:
        bootstrap_from_document(_edit(change))
    text = str(caught.value)
    if "..." in message:
        head, tail = message.split("...")
        assert text.startswith(head) and tail in text, text
    else:
        assert text.startswith(message), text


def test_not_yaml_is_refused_in_one_line() -> None:
    with pytest.raises(BootstrapError, match=r"^not valid YAML or JSON: .+ \(line 2, column 1\)$") as caught:
        read_bootstrap("static_resources: [\n")
    assert "\n" not in str(caught.value)
    with pytest.raises(BootstrapError, match="expected an Envoy v3 Bootstrap object, got a list"):
        read_bootstrap("- a list\n")


# --- hostile input: the attack, then the bound -------------------------------------------------------------


def _anchors(levels: int) -> str:
    """node.metadata holding lol0..lolN, lolN being 10^N strings by YAML aliases (a "billion laughs")."""
    lines = ["node:", "  metadata:", '    lol0: &lol0 "lol"']
    lines += [f"    lol{n}: &lol{n} [" + ", ".join([f"*lol{n - 1}"] * 10) + "]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_where_a_port_is_expected_is_refused_at_once() -> None:
    """Before: repr() of the value for the message, > 20 s and 1.4 GiB until killed."""
    text = _anchors(9) + EXAMPLE.read_text().replace("port_value: 443", "port_value: *lol9", 1)
    with pytest.raises(
        BootstrapError, match=r"^YAML aliases expand it to more than 100,000 values \(line 8,"
    ):
        read_bootstrap(text)


def test_an_aliased_value_within_the_bound_is_shown_bounded() -> None:
    text = _anchors(4) + EXAMPLE.read_text().replace("port_value: 443", "port_value: *lol4", 1)
    with pytest.raises(BootstrapError) as caught:
        read_bootstrap(text)
    head = f"{L0}.address.socket_address.port_value: expected an integer between 0 and 65535, got "
    assert str(caught.value).startswith(head + "[[")
    assert len(str(caught.value)) <= len(head) + 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node: " + "[" * 100_000 + "]" * 100_000 + "\n", r"^not valid YAML or JSON: .*nesting depth \(line 1,"),
        ("node:\n" + "".join(" " * level + "- \n" for level in range(1, 150)), r"^nested deeper than 100 levels \(line 101, column 101\)$"),
        ('{"node": ' + "[" * 100_000 + "]" * 100_000 + "}", r"^nested deeper than 100 levels \(line 1, column 109\)$"),
    ],
    ids=["yaml-flow", "yaml-block", "json"],
)  # fmt: skip
def test_deep_nesting_is_refused_without_recursion(text: str, message: str) -> None:
    """Before: a RecursionError traceback."""
    with pytest.raises(BootstrapError, match=message):
        read_bootstrap(text)


def test_messages_never_echo_a_header_value_and_stay_on_one_line() -> None:
    document = _edit(lambda d: tunneling_of(d)["headers_to_add"].append(
        {"header": {"key": "Proxy-Authorization", "value": "Bearer s3cret\r\nX-Evil: 1"}}))  # fmt: skip
    with pytest.raises(BootstrapError) as caught:
        bootstrap_from_document(document)
    assert str(caught.value) == (
        f"{TCP}.tunneling_config.headers_to_add[1].header.value: "
        "a non-empty HTTP header value of visible ASCII characters (no CR, LF or control bytes), got 24 characters"
    )
    # A key from the document is quoted and bounded in the config path; a value is bounded as it is shown.
    document = _edit(
        lambda d: listener_of(d)["address"]["socket_address"].update({"bo\x1b[31mgus\n" * 1000: 1})
    )
    with pytest.raises(BootstrapError) as caught:
        bootstrap_from_document(document)
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value) and len(str(caught.value)) < 200
    document = _edit(lambda d: cluster_of(d).update(connect_timeout="5" * 100_000))
    with pytest.raises(
        BootstrapError, match=r"expected a duration in seconds such as 5s or 0\.25s, got '5555"
    ) as caught:
        bootstrap_from_document(document)
    assert len(str(caught.value)) < 200


def test_unknown_fields_can_be_allowed_as_envoy_allows_them() -> None:
    document = _edit(lambda d: listener_of(d)["address"]["socket_address"].update(bogus=1))
    bootstrap = bootstrap_from_document(document, allow_unknown_fields=True)
    assert f"{L0}.address.socket_address.bogus" in bootstrap.ignored


def test_limits_timeouts_and_keepalive() -> None:
    def change(d: Document) -> None:
        layer = d["layered_runtime"]["layers"][0]["static_layer"]
        layer["envoy.resource_limits.listener.kube_apiserver.connection_limit"] = 300
        d["layered_runtime"]["layers"].append(
            {"name": "later", "static_layer": {"overload": {"global_downstream_max_connections": 200}}}
        )
        tcp_proxy_of(d)["idle_timeout"] = "0s"
        cluster_of(d).update(connect_timeout="0.25s", dns_lookup_family="AUTO", dns_refresh_rate="30s")
        cluster_of(d)["upstream_connection_options"]["tcp_keepalive"] = {"keepalive_probes": 3}
        listener_of(d).update(freebind=True, tcp_backlog_size=128)
        listener_of(d).pop("per_connection_buffer_limit_bytes")
        cluster_of(d).pop("per_connection_buffer_limit_bytes")

    config = bootstrap_from_document(_edit(change)).config
    assert config.listener.max_connections == 200  # nested keys, the later layer, the smaller limit
    assert config.listener.freebind and config.listener.backlog == 128
    assert config.tunnel.idle_timeout > 300 * 24 * 3600  # 0s: never
    assert config.tunnel.connect_timeout == 0.25
    assert config.tunnel.dns_family is DNSFamily.AUTO and config.tunnel.dns_refresh == 30.0
    # Fields tcp_keepalive leaves out keep the kernel's values, as in Envoy.
    assert (
        config.tunnel.tcp_keepalive_time,
        config.tunnel.tcp_keepalive_interval,
        config.tunnel.tcp_keepalive_probes,
    ) == (7200, 75, 3)
    assert config.tunnel.buffer_size == 1024 * 1024  # Envoy's default


def test_ignore_global_conn_limit_and_no_limits_at_all() -> None:
    config = bootstrap_from_document(
        _edit(lambda d: listener_of(d).update(ignore_global_conn_limit=True) or d.pop("layered_runtime"))
    ).config
    assert config.listener.max_connections == UNLIMITED_CONNECTIONS


def test_circuit_breaker_connections_cap_the_listener() -> None:
    config = bootstrap_from_document(
        _edit(lambda d: cluster_of(d).update(circuit_breakers={"thresholds": [{"max_connections": 1024}]}))
    ).config
    assert config.listener.max_connections == 1024


def test_legacy_modes() -> None:
    def proxy_v2(d: Document) -> None:
        tcp_proxy_of(d).pop("tunneling_config")
        cluster_of(d)["transport_socket"] = {"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            "config": {"version": "V2"},
            "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}}  # fmt: skip

    config = bootstrap_from_document(_edit(proxy_v2)).config
    assert config.tunnel.upstream_protocol is UpstreamProtocol.PROXY_PROTOCOL_V2
    assert config.tunnel.connect_headers == () and config.tunnel.connect_authority == ""

    def both_headers(d: Document) -> None:
        cluster_of(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["port_value"] = 8132
        tunneling_of(d)["headers_to_add"].append(
            {
                "header": {
                    "key": "Reversed-VPN",
                    "value": "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local",
                }
            }
        )

    tunnel = bootstrap_from_document(_edit(both_headers)).config.tunnel
    assert tunnel.upstream.port == 8132
    assert [name for name, _ in tunnel.connect_headers] == ["X-Gardener-Destination", "Reversed-VPN"]


def test_without_metrics_listener_or_access_log_there_is_no_monitoring() -> None:
    def change(d: Document) -> None:
        d["static_resources"]["listeners"].pop(1)
        tcp_proxy_of(d).pop("access_log")

    assert bootstrap_from_document(_edit(change)).config.monitoring is None
    only_log = bootstrap_from_document(_edit(lambda d: d["static_resources"]["listeners"].pop(1))).config
    assert only_log.monitoring is not None and only_log.monitoring.addresses == ()


def test_alt_stat_name_names_the_cluster_in_envoy_metrics_and_other_runtime_keys_are_listed_as_ignored() -> (
    None
):
    def change(d: Document) -> None:
        cluster_of(d)["alt_stat_name"] = "apiserver"
        d["layered_runtime"]["layers"][0]["static_layer"]["re2.max_program_size.error_level"] = 1000

    bootstrap = bootstrap_from_document(_edit(change))
    assert bootstrap.config.monitoring is not None
    assert bootstrap.config.monitoring.envoy_cluster_name == "apiserver"
    assert "layered_runtime re2.max_program_size.error_level" in bootstrap.ignored
    assert not any("connection_limit" in path for path in bootstrap.ignored)
