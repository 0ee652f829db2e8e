"""The Envoy-compatible exposition, without sockets: names, labels, buckets, as Envoy writes them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from apiproxy.monitoring.envoy_stats import ENVOY_BUCKETS_MS, NAMES, EnvoyStats, listener_address_label


def test_every_gardener_name_with_its_labels() -> None:
    stats = EnvoyStats("kube_apiserver", "kube_apiserver", listener_address_label("240.168.102.23", 443))
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
    stats = EnvoyStats("c", "p", "127.0.0.1_443")
    for value in (0.2, 0.5, 3, 7200000, 9e9):
        stats.cluster_upstream_cx_length_ms.observe(value)
    lines = [
        line for line in stats.render().splitlines() if line.startswith("envoy_cluster_upstream_cx_length_ms")
    ]
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
