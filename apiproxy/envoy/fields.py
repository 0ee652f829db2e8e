"""The Envoy v3 messages apiproxy reads, field by field: used, ignored (no effect on the bytes), or refused
with the reason. A field missing from its table is unknown to Envoy too (and refused like Envoy refuses it).
"""

from __future__ import annotations

USE = "use"
IGNORE = "ignore"
NOT_SUPPORTED = "not supported"

TYPE_PREFIX = "type.googleapis.com/"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_CONNECTION_MANAGER = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
STDOUT_ACCESS_LOG = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
FILE_ACCESS_LOG = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
RAW_BUFFER = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
UPSTREAM_PROXY_PROTOCOL = (
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport"
)
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# The admin paths the metrics listener may route to, and the public path apiproxy serves each on.
ADMIN_ROUTES = {"/stats/prometheus": "/metrics", "/ready": "/ready"}


BOOTSTRAP_FIELDS = {
    "node": IGNORE, "static_resources": USE, "dynamic_resources": "not supported (xDS)",
    "cluster_manager": IGNORE, "hds_config": NOT_SUPPORTED, "flags_path": IGNORE, "stats_sinks": IGNORE,
    "deferred_stat_options": IGNORE, "stats_config": IGNORE, "stats_flush_interval": IGNORE,
    "stats_flush_on_admin": IGNORE, "watchdog": IGNORE, "watchdogs": IGNORE, "tracing": IGNORE,
    "layered_runtime": USE, "admin": USE, "overload_manager": NOT_SUPPORTED, "enable_dispatcher_stats": IGNORE,
    "header_prefix": IGNORE, "stats_server_version_override": IGNORE, "use_tcp_for_dns_lookups": IGNORE,
    "dns_resolution_config": "not supported (apiproxy uses the system resolver)",
    "typed_dns_resolver_config": "not supported (apiproxy uses the system resolver)",
    "bootstrap_extensions": NOT_SUPPORTED, "fatal_actions": IGNORE, "config_sources": IGNORE,
    "default_config_source": IGNORE, "default_socket_interface": NOT_SUPPORTED,
    "certificate_provider_instances": IGNORE, "inline_headers": IGNORE, "perf_tracing_file_path": IGNORE,
    "default_regex_engine": IGNORE, "xds_delegate_extension": IGNORE, "xds_config_tracker_extension": IGNORE,
    "listener_manager": IGNORE, "application_log_config": IGNORE, "grpc_async_client_manager_config": IGNORE,
    "memory_allocator_manager": IGNORE,
}  # fmt: skip
STATIC_RESOURCES_FIELDS = {"listeners": USE, "clusters": USE, "secrets": IGNORE}
ADMIN_FIELDS = {
    "access_log": IGNORE, "access_log_path": IGNORE, "profile_path": IGNORE, "address": USE,
    "socket_options": IGNORE, "ignore_global_conn_limit": IGNORE, "allow_paths": IGNORE,
}  # fmt: skip
LAYERED_RUNTIME_FIELDS = {"layers": USE}
LAYER_FIELDS = {
    "name": IGNORE, "static_layer": USE, "admin_layer": IGNORE,
    "disk_layer": "not supported (only static_layer runtime values are read)",
    "rtds_layer": "not supported (only static_layer runtime values are read)",
}  # fmt: skip
LISTENER_FIELDS = {
    "name": USE, "address": USE, "additional_addresses": USE, "stat_prefix": IGNORE, "filter_chains": USE,
    "fcds_config": NOT_SUPPORTED, "filter_chain_matcher": NOT_SUPPORTED, "use_original_dst": USE,
    "default_filter_chain": NOT_SUPPORTED, "per_connection_buffer_limit_bytes": USE, "metadata": IGNORE,
    "deprecated_v1": NOT_SUPPORTED, "drain_type": IGNORE, "listener_filters": NOT_SUPPORTED,
    "listener_filters_timeout": IGNORE, "continue_on_listener_filters_timeout": IGNORE, "transparent": USE,
    "freebind": USE, "socket_options": NOT_SUPPORTED, "tcp_fast_open_queue_length": IGNORE,
    "traffic_direction": IGNORE, "udp_listener_config": NOT_SUPPORTED, "api_listener": NOT_SUPPORTED,
    "connection_balance_config": IGNORE, "reuse_port": IGNORE, "enable_reuse_port": IGNORE,
    "access_log": "not supported (use the tcp_proxy's access_log)", "tcp_backlog_size": USE,
    "max_connections_to_accept_per_socket_event": IGNORE, "bind_to_port": USE,
    "internal_listener": NOT_SUPPORTED, "enable_mptcp": NOT_SUPPORTED, "ignore_global_conn_limit": USE,
    "bypass_overload_manager": IGNORE,
}  # fmt: skip
FILTER_CHAIN_FIELDS = {
    "filter_chain_match": USE, "filters": USE, "use_proxy_proto": NOT_SUPPORTED, "metadata": IGNORE,
    "transport_socket": "not supported (TLS is passed through, never terminated)",
    "transport_socket_connect_timeout": IGNORE, "name": IGNORE, "on_demand_configuration": NOT_SUPPORTED,
}  # fmt: skip
FILTER_FIELDS = {"name": USE, "typed_config": USE, "config_discovery": NOT_SUPPORTED}
# The metrics listener's (the tunnel listener has one address), and its routes to the admin cluster.
ADDITIONAL_ADDRESS_FIELDS = {"address": USE, "socket_options": NOT_SUPPORTED}
ROUTE_ACTION_FIELDS = {"cluster": USE, "prefix_rewrite": USE, "timeout": IGNORE, "idle_timeout": IGNORE}
ADDRESS_FIELDS = {"socket_address": USE, "pipe": USE, "envoy_internal_address": NOT_SUPPORTED}
PIPE_FIELDS = {"path": USE, "mode": IGNORE}
SOCKET_ADDRESS_FIELDS = {
    "protocol": USE, "address": USE, "port_value": USE, "named_port": NOT_SUPPORTED,
    "resolver_name": NOT_SUPPORTED, "ipv4_compat": USE, "network_namespace_filepath": NOT_SUPPORTED,
}  # fmt: skip
TCP_PROXY_FIELDS = {
    "@type": USE, "stat_prefix": USE, "cluster": USE, "weighted_clusters": NOT_SUPPORTED,
    "on_demand": NOT_SUPPORTED, "metadata_match": IGNORE, "idle_timeout": USE,
    "downstream_idle_timeout": IGNORE, "upstream_idle_timeout": IGNORE, "access_log": USE,
    "max_connect_attempts": IGNORE, "backoff_options": IGNORE, "hash_policy": IGNORE, "tunneling_config": USE,
    "max_downstream_connection_duration": NOT_SUPPORTED,
    "max_downstream_connection_duration_jitter_percentage": IGNORE, "access_log_flush_interval": IGNORE,
    "flush_access_log_on_connected": IGNORE, "access_log_options": IGNORE, "proxy_protocol_tlvs": NOT_SUPPORTED,
}  # fmt: skip
TUNNELING_FIELDS = {
    "hostname": USE, "use_post": USE, "headers_to_add": USE, "propagate_response_headers": IGNORE,
    "post_path": "not supported (CONNECT only)", "propagate_response_trailers": IGNORE,
    "request_id_extension": NOT_SUPPORTED,
}  # fmt: skip
HEADER_OPTION_FIELDS = {"header": USE, "append": IGNORE, "append_action": IGNORE, "keep_empty_value": IGNORE}
HEADER_FIELDS = {"key": USE, "value": USE, "raw_value": NOT_SUPPORTED}
ACCESS_LOG_FIELDS = {"name": USE, "filter": "not supported (every tunnel is logged)", "typed_config": USE}
STDOUT_ACCESS_LOG_FIELDS = {"@type": USE, "log_format": USE}
FILE_ACCESS_LOG_FIELDS = {
    "@type": USE, "path": USE, "log_format": USE, "format": USE,
    "json_format": "not supported (text formats only)", "typed_json_format": "not supported (text formats only)",
}  # fmt: skip
TEXT_FORMAT_SOURCE_FIELDS = {
    "inline_string": USE, "filename": "not supported (inline_string only)",
    "inline_bytes": "not supported (inline_string only)",
    "environment_variable": "not supported (inline_string only)",
}  # fmt: skip
LOG_FORMAT_FIELDS = {
    "text_format": USE, "text_format_source": USE, "json_format": "not supported (text formats only)",
    "omit_empty_values": NOT_SUPPORTED, "content_type": IGNORE, "formatters": NOT_SUPPORTED,
    "json_format_options": IGNORE,
}  # fmt: skip
CLUSTER_FIELDS = {
    "name": USE, "alt_stat_name": USE, "type": USE, "cluster_type": NOT_SUPPORTED,
    "eds_cluster_config": NOT_SUPPORTED, "connect_timeout": USE, "per_connection_buffer_limit_bytes": USE,
    "lb_policy": IGNORE, "load_assignment": USE, "health_checks": "not supported (no active health checks)",
    "max_requests_per_connection": IGNORE, "circuit_breakers": USE, "upstream_http_protocol_options": IGNORE,
    "common_http_protocol_options": IGNORE, "http_protocol_options": IGNORE,
    "http2_protocol_options": "not supported (HTTP/2 tunnelling; apiproxy speaks HTTP/1.1 CONNECT)",
    "typed_extension_protocol_options": USE, "dns_refresh_rate": USE, "dns_jitter": IGNORE,
    "dns_failure_refresh_rate": IGNORE, "respect_dns_ttl": IGNORE, "dns_lookup_family": USE,
    "dns_resolvers": "not supported (apiproxy uses the system resolver)", "use_tcp_for_dns_lookups": IGNORE,
    "dns_resolution_config": "not supported (apiproxy uses the system resolver)",
    "typed_dns_resolver_config": "not supported (apiproxy uses the system resolver)",
    "wait_for_warm_on_init": IGNORE, "outlier_detection": IGNORE, "cleanup_interval": IGNORE,
    "upstream_bind_config": NOT_SUPPORTED, "lb_subset_config": IGNORE, "ring_hash_lb_config": IGNORE,
    "maglev_lb_config": IGNORE, "original_dst_lb_config": NOT_SUPPORTED, "least_request_lb_config": IGNORE,
    "round_robin_lb_config": IGNORE, "common_lb_config": IGNORE, "transport_socket": USE, "metadata": IGNORE,
    "protocol_selection": IGNORE, "upstream_connection_options": USE,
    "close_connections_on_host_health_failure": IGNORE, "ignore_health_on_host_removal": IGNORE,
    "filters": NOT_SUPPORTED, "load_balancing_policy": IGNORE, "lrs_server": IGNORE,
    "lrs_report_endpoint_metrics": IGNORE, "track_timeout_budgets": IGNORE, "upstream_config": NOT_SUPPORTED,
    "track_cluster_stats": IGNORE, "preconnect_policy": IGNORE,
    "connection_pool_per_downstream_connection": IGNORE, "transport_socket_matches": NOT_SUPPORTED,
}  # fmt: skip
UPSTREAM_OPTIONS_FIELDS = {
    "tcp_keepalive": USE, "set_local_interface_name_on_upstream_connections": IGNORE, "happy_eyeballs_config": IGNORE,
}  # fmt: skip
TRANSPORT_SOCKET_FIELDS = {"name": USE, "typed_config": USE}
PROXY_PROTOCOL_TRANSPORT_FIELDS = {
    "@type": USE, "config": USE, "transport_socket": USE, "allow_unspecified_address": IGNORE,
    "tlv_as_pool_key": IGNORE,
}  # fmt: skip
PROXY_PROTOCOL_CONFIG_FIELDS = {
    "version": USE, "pass_through_tlvs": NOT_SUPPORTED, "added_tlvs": NOT_SUPPORTED,
}  # fmt: skip
KEEPALIVE_FIELDS = {"keepalive_probes": USE, "keepalive_time": USE, "keepalive_interval": USE}
CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST")
DNS_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")
