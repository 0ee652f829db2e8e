{{/* Gardener's envoy.yaml for the apiserver-proxy pod, from this chart's values (gardenerCompatible).
apiproxy's `envoy` reads it; the real Envoy accepts it too (CI validates it with both). */}}
{{- define "apiserver-proxy.envoyYAML" -}}
{{- $vip := include "apiserver-proxy.vip" . }}
{{- $port := int .Values.metrics.port }}
{{- $admin := "/etc/admin-uds/admin.socket" -}}
layered_runtime:
  layers:
  - name: static_layer_0
    static_layer:
      envoy.resource_limits.listener.kube_apiserver.connection_limit: {{ int .Values.maxConnections }}
      overload.global_downstream_max_connections: {{ int .Values.maxConnections }}
admin:
  address:
    pipe:
      path: {{ $admin }}
static_resources:
  listeners:
  - name: kube_apiserver
    address:
      socket_address:
        address: {{ $vip | quote }}
        port_value: 443
    per_connection_buffer_limit_bytes: {{ int .Values.bufferSize }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: kube_apiserver
          cluster: kube_apiserver
          idle_timeout: {{ include "apiserver-proxy.seconds" .Values.timeouts.idle }}
          tunneling_config:
            hostname: {{ include "apiserver-proxy.connectAuthority" . | quote }}
            headers_to_add:
            {{- $destination := include "apiserver-proxy.destination" . }}
            {{- range .Values.upstream.destinationHeaders }}
            - header:
                key: {{ . | quote }}
                value: {{ $destination | quote }}
            {{- end }}
          {{- if .Values.logging.accessLog }}
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% rx %BYTES_SENT% tx %DURATION%ms \"%DOWNSTREAM_REMOTE_ADDRESS%\" \"%UPSTREAM_HOST%\"\n"
          {{- end }}
  - name: metrics
    address:
      socket_address:
        address: 0.0.0.0
        port_value: {{ $port }}
    additional_addresses:
    - address:
        socket_address:
          address: "::"
          port_value: {{ $port }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          use_remote_address: true
          codec_type: AUTO
          common_http_protocol_options:
            idle_timeout: 8s
            max_connection_duration: 10s
            max_headers_count: 20
            max_stream_duration: 8s
            headers_with_underscores_action: REJECT_REQUEST
          http2_protocol_options:
            max_concurrent_streams: 5
            initial_stream_window_size: 65536
            initial_connection_window_size: 1048576
          stream_idle_timeout: 8s
          request_timeout: 9s
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match: {path: /metrics}
                route: {cluster: uds_admin, prefix_rewrite: /stats/prometheus}
              - match: {path: /ready}
                route: {cluster: uds_admin}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: kube_apiserver
    connect_timeout: {{ include "apiserver-proxy.seconds" .Values.timeouts.connect }}
    per_connection_buffer_limit_bytes: {{ int .Values.bufferSize }}
    type: LOGICAL_DNS
    dns_lookup_family: {{ include "apiserver-proxy.dnsLookupFamily" . }}
    dns_refresh_rate: {{ include "apiserver-proxy.seconds" .Values.upstream.dnsRefresh }}
    lb_policy: ROUND_ROBIN
    # Envoy's default circuit breaker would cap tunnels at 1024 whatever maxConnections says.
    circuit_breakers:
      thresholds:
      - max_connections: {{ int .Values.maxConnections }}
    load_assignment:
      cluster_name: kube_apiserver
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: {{ include "apiserver-proxy.upstreamHost" . | quote }}
                port_value: {{ include "apiserver-proxy.upstreamPort" . }}
    upstream_connection_options:
      tcp_keepalive:
        keepalive_time: {{ trimSuffix "s" (include "apiserver-proxy.seconds" .Values.tcpKeepalive.time) | int }}
        keepalive_interval: {{ trimSuffix "s" (include "apiserver-proxy.seconds" .Values.tcpKeepalive.interval) | int }}
  - name: uds_admin
    connect_timeout: 0.25s
    type: STATIC
    load_assignment:
      cluster_name: uds_admin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe:
                path: {{ $admin }}
{{- end }}
