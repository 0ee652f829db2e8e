"""The Envoy front end: run the Envoy v3 bootstrap Gardener renders (`envoy.yaml`) unchanged.

`bootstrap` reads the config into a `ProxyConfig` (sans-I/O) and refuses, naming the config path, what
apiproxy cannot honour; it reads the top level and hands each piece to the module named after it:
`listener`, `metrics` (the admin and the metrics listener), `tcp_proxy`, `cluster`, `access_log`,
`layered_runtime`, and `address` for every Address. `fields` says, message by message, which fields are
used, ignored or refused; `message` is the typed view of the YAML/JSON tree (loaded within bounds by
`apiproxy.documents`); `cli` is `apiproxy-envoy`, which takes Envoy's command line (the image links it as
`envoy`).

Honoured: the tcp_proxy listener's address, per_connection_buffer_limit_bytes, freebind, tcp_backlog_size;
tcp_proxy stat_prefix, cluster, idle_timeout, the stdout access log's text format, tunneling_config hostname
and headers_to_add; the cluster's one endpoint, type (STATIC, STRICT_DNS, LOGICAL_DNS), dns_lookup_family,
dns_refresh_rate, connect_timeout, tcp_keepalive, buffer limit, circuit_breakers max_connections,
alt_stat_name, an upstream_proxy_protocol (v2) transport socket (legacy PROXY mode); the metrics listeners'
addresses and additional_addresses routing /metrics and /ready to the admin; layered_runtime connection
limits. Refused: other network, listener or HTTP filters, TLS transport sockets, HTTP/2 or POST tunnelling,
command operators in the tunnel's hostname or headers, xDS, other cluster types or several endpoints.
"""
