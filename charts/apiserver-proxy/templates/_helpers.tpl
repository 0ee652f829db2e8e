{{/* Names, labels and the small conversions the templates share. */}}

{{- define "apiserver-proxy.name" -}}apiserver-proxy{{- end }}

{{/* Every object's labels: Gardener's (the selector's, gardener.cloud/role, origin) and Helm's. */}}
{{- define "apiserver-proxy.labels" -}}
{{ include "apiserver-proxy.stableLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The selector of Gardener's own apiserver-proxy DaemonSet and Service (app=kubernetes,role=apiserver-proxy),
so this DaemonSet can take its place. A DaemonSet's selector cannot change after it is created. */}}
{{- define "apiserver-proxy.selectorLabels" -}}
app: kubernetes
role: apiserver-proxy
{{- end }}

{{/* The labels that stay the same from one chart version to the next (the pod's: a new label value would
roll every node's pod). */}}
{{- define "apiserver-proxy.stableLabels" -}}
{{ include "apiserver-proxy.selectorLabels" . }}
gardener.cloud/role: system-component
origin: gardener
app.kubernetes.io/name: apiserver-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Gardener keeps a new node tainted until the pods labelled node-critical on it are ready; the
networking.gardener.cloud labels let the pod through a shoot's network policies (DNS, the API server, and
the seed reaching it), as Gardener's pod does. */}}
{{- define "apiserver-proxy.podLabels" -}}
{{ include "apiserver-proxy.stableLabels" . }}
node.gardener.cloud/critical-component: "true"
networking.gardener.cloud/from-seed: allowed
networking.gardener.cloud/to-apiserver: allowed
networking.gardener.cloud/to-dns: allowed
{{- end }}

{{/* The envoy.yaml ConfigMap (gardenerCompatible) is immutable and named by its content, as Gardener's:
a new envoy.yaml is a new ConfigMap, which rolls the pods. */}}
{{- define "apiserver-proxy.configMapName" -}}
apiserver-proxy-config-{{ include "apiserver-proxy.envoyYAML" . | sha256sum | trunc 8 }}
{{- end }}

{{- define "apiserver-proxy.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default "apiserver-proxy" }}
{{- end }}

{{- define "apiserver-proxy.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{/* The values every mode needs; `required` names the value to set. */}}
{{- define "apiserver-proxy.vip" -}}
{{- required "vip.address is required: the VIP pods reach the API server on, e.g. 240.168.102.23" .Values.vip.address }}
{{- end }}
{{- define "apiserver-proxy.upstream" -}}
{{- required "upstream.address is required: the seed gateway, HOST:PORT" .Values.upstream.address }}
{{- end }}
{{- define "apiserver-proxy.destination" -}}
{{- required "upstream.destination is required: the destination header's value" .Values.upstream.destination }}
{{- end }}

{{/* The gateway's host and port from upstream.address (HOST:PORT or [IPv6]:PORT). */}}
{{- define "apiserver-proxy.upstreamHost" -}}
{{- regexReplaceAll "^\\[?(.*?)\\]?:[0-9]+$" (include "apiserver-proxy.upstream" .) "${1}" }}
{{- end }}
{{- define "apiserver-proxy.upstreamPort" -}}
{{- regexReplaceAll "^.*:([0-9]+)$" (include "apiserver-proxy.upstream" .) "${1}" }}
{{- end }}

{{/* CONNECT authority: upstream.connectAuthority, else <upstream host>:443 (as Gardener's tunneling hostname). */}}
{{- define "apiserver-proxy.connectAuthority" -}}
{{- if .Values.upstream.connectAuthority -}}
{{ .Values.upstream.connectAuthority }}
{{- else -}}
{{- $host := include "apiserver-proxy.upstreamHost" . -}}
{{- if contains ":" $host }}[{{ $host }}]:443{{ else }}{{ $host }}:443{{ end }}
{{- end }}
{{- end }}

{{/* A duration value (the schema allows <n>ms|s|m|h) as an Envoy proto duration, e.g. 1h -> 3600s. */}}
{{- define "apiserver-proxy.seconds" -}}
{{- $text := toString . -}}
{{- $number := regexFind "^[0-9]+" $text -}}
{{- $unit := trimPrefix $number $text -}}
{{- $n := int64 $number -}}
{{- if eq $unit "ms" -}}{{ printf "%.3fs" (divf $n 1000) }}
{{- else if eq $unit "m" -}}{{ mul $n 60 }}s
{{- else if eq $unit "h" -}}{{ mul $n 3600 }}s
{{- else -}}{{ $n }}s
{{- end }}
{{- end }}

{{/* Envoy's dns_lookup_family for upstream.dnsFamily. */}}
{{- define "apiserver-proxy.dnsLookupFamily" -}}
{{- get (dict "v4" "V4_ONLY" "v6" "V6_ONLY" "auto" "AUTO") .Values.upstream.dnsFamily }}
{{- end }}

{{/* Capabilities: each container gets only what its job needs. */}}
{{- define "apiserver-proxy.vipCapabilities" -}}
- NET_ADMIN
{{- if .Values.vip.setupIptables }}
- NET_RAW
{{- end }}
{{- end }}

{{- define "apiserver-proxy.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
# UID 0 as Gardener's containers: the capabilities below are all it has.
runAsUser: 0
runAsNonRoot: false
capabilities:
  drop: [ALL]
  add:
{{- .capabilities | nindent 4 }}
{{- end }}

{{/* The sidecar's flags (Go flag syntax), for the init container and the sidecar. */}}
{{- define "apiserver-proxy.sidecarArgs" -}}
- --ip-address={{ include "apiserver-proxy.vip" . }}
- --interface={{ .Values.vip.interface }}
{{- if .Values.vip.setupIptables }}
- --setup-iptables=true
{{- end }}
{{- end }}

{{/* The proxy's probes. Loopback: the endpoint keeps connection slots for loopback sources that pods cannot
take, and the kubelet shares the node's network namespace with this hostNetwork pod (the metrics address
includes 0.0.0.0:<port>). No `ports:` entry: in a hostNetwork pod it becomes a hostPort, and the scheduler
would then keep a rollout's surge pod off the node, whose old pod holds that hostPort. */}}
{{- define "apiserver-proxy.probes" -}}
readinessProbe:
  httpGet:
    host: 127.0.0.1
    path: /ready
    port: {{ .Values.metrics.port }}
  periodSeconds: {{ .Values.readinessProbe.periodSeconds }}
  timeoutSeconds: {{ .Values.readinessProbe.timeoutSeconds }}
  failureThreshold: {{ .Values.readinessProbe.failureThreshold }}
livenessProbe:
  httpGet:
    host: 127.0.0.1
    path: /ready
    port: {{ .Values.metrics.port }}
  initialDelaySeconds: {{ .Values.livenessProbe.initialDelaySeconds }}
  periodSeconds: {{ .Values.livenessProbe.periodSeconds }}
  timeoutSeconds: {{ .Values.livenessProbe.timeoutSeconds }}
  failureThreshold: {{ .Values.livenessProbe.failureThreshold }}
{{- end }}

{{/* Rolling updates: where the handover socket lives in the container, and the checks that make a rollout
safe. The drain must end before the kubelet's SIGKILL; in gardenerCompatible mode the sidecar takes no part
in the handover, so its --cleanup would remove the VIP under the new pod of a surge rollout. */}}
{{- define "apiserver-proxy.handoverDirectory" -}}/var/run/apiserver-proxy{{- end }}

{{- define "apiserver-proxy.surges" -}}
{{- $rolling := .Values.updateStrategy.rollingUpdate | default dict }}
{{- if and (eq (.Values.updateStrategy.type | default "RollingUpdate") "RollingUpdate") $rolling.maxSurge (ne (toString $rolling.maxSurge) "0") (ne (toString $rolling.maxSurge) "0%") }}true{{ end }}
{{- end }}

{{- define "apiserver-proxy.checkRollout" -}}
{{- $rolling := .Values.updateStrategy.rollingUpdate | default dict }}
{{- if and (hasKey $rolling "maxSurge") (hasKey $rolling "maxUnavailable") (eq (toString $rolling.maxSurge | trimSuffix "%") "0") (eq (toString $rolling.maxUnavailable | trimSuffix "%") "0") }}
{{- fail "updateStrategy.rollingUpdate: maxSurge and maxUnavailable cannot both be 0 (Kubernetes refuses it)" }}
{{- end }}
{{- $drain := 20.0 }}
{{- if ne .Values.mode "gardenerCompatible" }}
{{- $drain = include "apiserver-proxy.seconds" .Values.timeouts.drain | trimSuffix "s" | float64 }}
{{- end }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be longer than the drain (%vs): the kubelet would kill the proxy mid-drain" .Values.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and (eq .Values.mode "gardenerCompatible") .Values.vip.cleanup (include "apiserver-proxy.surges" .) }}
{{- fail "vip.cleanup with a surge rollout (updateStrategy.rollingUpdate.maxSurge) in gardenerCompatible mode: the old pod's sidecar would remove the VIP the new pod serves on; use allInOne, or maxSurge 0" }}
{{- end }}
{{- if and (include "apiserver-proxy.surges" .) (not .Values.handover.enabled) }}
{{- fail "updateStrategy.rollingUpdate.maxSurge needs handover.enabled: without it the new pod's proxy cannot listen on VIP:443 beside the old one, and the rollout stalls" }}
{{- end }}
{{- end }}

{{/* The proxy container's environment: the handover socket, then extraEnv. */}}
{{- define "apiserver-proxy.proxyEnv" -}}
{{- if or .Values.handover.enabled .Values.extraEnv -}}
env:
  {{- if .Values.handover.enabled }}
  - name: APIPROXY_HANDOVER_SOCKET
    value: {{ include "apiserver-proxy.handoverDirectory" . }}/handover
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}
