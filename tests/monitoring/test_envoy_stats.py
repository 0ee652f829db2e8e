"""The Envoy-compatible exposition, without sockets: names, labels, buckets, as Envoy writes them."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiproxy.monitoring.envoy_stats import ENVOY_BUCKETS_MS, NAMES, EnvoyStats, listener_address_label
from apiproxy.monitoring.metrics import NativeMetrics
from apiproxy.reasons import Reason, Refusal


def test_every_gardener_name_with_its_labels() -> None:
    stats = EnvoyStats(
        NativeMetrics(ENVOY_BUCKETS_MS),
        "kube_apiserver",
        "kube_apiserver",
        listener_address_label("240.168.102.23", 443),
    )
    text = stats.render()
    sample_names = {line.split("{", 1)[0] for line in text.splitlines() if not line.startswith("#")}
    assert set(NAMES) <= sample_names
    assert len(NAMES) == 17
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="240.168.102.23_443"} 0' in text
    assert 'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="kube_apiserver"} 0' in text
    assert 'envoy_cluster_bind_errors{envoy_cluster_name="kube_apiserver"} 0' in text
    assert "# TYPE envoy_cluster_bind_errors counter" in text  # a counter without _total, as Envoy has it
    # prometheus-client's own parser reads it.
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "envoy_cluster_upstream_cx_connect_ms" in families


def test_histograms_have_envoys_buckets_and_count_what_they_saw() -> None:
    """The connection lengths are the native durations in Envoy's buckets: the listener's of every tunnel,
    the cluster's of those that reached the gateway or tried to."""
    native = NativeMetrics(ENVOY_BUCKETS_MS)
    stats = EnvoyStats(native, "c", "p", "127.0.0.1_443")
    for milliseconds in (0.2, 0.5, 3, 7200000, 9e9):
        native.durations.observe(milliseconds / 1000, at_gateway=True)
    native.durations.observe(0.0001, at_gateway=False)  # e.g. closed before its first byte
    text = stats.render()
    assert 'envoy_listener_downstream_cx_length_ms_count{envoy_listener_address="127.0.0.1_443"} 6' in text
    assert (
        'envoy_listener_downstream_cx_length_ms_bucket{envoy_listener_address="127.0.0.1_443",le="0.5"} 3'
        in text
    )
    lines = [line for line in text.splitlines() if line.startswith("envoy_cluster_upstream_cx_length_ms")]
    buckets = {
        line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in lines
        if "_bucket" in line
    }
    assert list(buckets) == [
        *(str(int(b)) if float(b).is_integer() else str(b) for b in ENVOY_BUCKETS_MS),
        "+Inf",
    ]
    assert buckets["0.5"] == 2 and buckets["1"] == 2 and buckets["5"] == 3 and buckets["3600000"] == 3
    assert buckets["+Inf"] == 5
    assert 'envoy_cluster_upstream_cx_length_ms_count{envoy_cluster_name="c"} 5' in lines


def test_listener_address_label_is_envoys_form() -> None:
    assert listener_address_label("240.168.102.23", 443) == "240.168.102.23_443"
    assert listener_address_label("fd00::1", 443) == "[fd00__1]_443"


def test_counters_read_from_the_native_figures() -> None:
    """What the native metrics count already is not counted twice: Envoy's counters are read from them."""
    native = NativeMetrics(ENVOY_BUCKETS_MS)
    stats = EnvoyStats(native, "c", "p", "l", connect_request_bytes=100, resolved_at_start=True)
    native.opened = 5
    native.closed.update({Reason.COMPLETED: 2, Reason.DNS_FAILURE: 1})
    native.rejected.update({Refusal.OVERFLOW: 2, Refusal.SOURCE_LIMIT: 1})
    native.received_bytes, native.sent_bytes = 1000, 2000
    native.dns_resolutions, native.dns_failures = 3, 1
    stats.answer_bytes = 38
    for value in (1.0, 2.0):  # two upstream connections made
        stats.cluster_upstream_cx_connect_ms.observe(value)
    for seconds in (0.001, 0.002, 0.003):
        native.durations.observe(seconds, at_gateway=True)
    counters = {
        line.split("{")[0]: int(line.rsplit(" ", 1)[1])
        for line in stats.render().splitlines()
        if not line.startswith("#") and "_ms_" not in line
    }
    assert counters == {
        "envoy_cluster_bind_errors": 0,
        "envoy_cluster_lb_healthy_panic": 0,
        "envoy_cluster_update_attempt": 4,  # the address literal's "resolution" at start, then 3
        "envoy_cluster_update_failure": 1,
        "envoy_cluster_upstream_cx_none_healthy": 1,
        "envoy_cluster_upstream_cx_rx_bytes_total": 2038,
        "envoy_cluster_upstream_cx_tx_bytes_total": 1200,  # a CONNECT request per connection made
        "envoy_listener_downstream_cx_destroy": 3,
        "envoy_listener_downstream_cx_overflow": 3,  # over the listener's limit or a source's cap
        "envoy_listener_downstream_cx_total": 5,
        "envoy_tcp_downstream_cx_no_route": 0,
        "envoy_tcp_downstream_cx_rx_bytes_total": 1000,
        "envoy_tcp_downstream_cx_total": 5,
        "envoy_tcp_downstream_cx_tx_bytes_total": 2000,
    }


def test_the_native_figures_must_keep_envoys_buckets() -> None:
    with pytest.raises(ValueError, match="Envoy's buckets"):
        EnvoyStats(NativeMetrics(), "c", "p", "l")
