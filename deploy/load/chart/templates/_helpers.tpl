{{/* Labels of the Job and its pods. */}}
{{- define "apiproxy-load.selectorLabels" -}}
app.kubernetes.io/name: apiproxy-load
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apiproxy-load.labels" -}}
{{ include "apiproxy-load.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The generator's target and TLS flags, from .Values.target and .Values.tls. */}}
{{- define "apiproxy-load.targetArgs" -}}
{{- $t := .Values.target }}
{{- if eq (empty $t.node) (empty $t.gateway) }}
{{- fail "target: set exactly one of target.node (a node proxy, HOST:PORT) or target.gateway (the seed gateway, HOST:PORT)" }}
{{- end }}
{{- if $t.node }}
- --target
- {{ $t.node | quote }}
{{- else }}
{{- if not $t.destination }}
{{- fail "target.destination is required with target.gateway" }}
{{- end }}
- --gateway
- {{ $t.gateway | quote }}
- --destination
- {{ $t.destination | quote }}
{{- range $t.destinationHeaders }}
- --destination-header
- {{ . | quote }}
{{- end }}
{{- with $t.connectAuthority }}
- --connect-authority
- {{ . | quote }}
{{- end }}
{{- end }}
{{- $tls := .Values.tls }}
{{- if $tls.plain }}
- --plain
{{- else }}
{{- with $tls.sni }}
- --sni
- {{ . | quote }}
{{- end }}
{{- if $tls.insecure }}
- --insecure
{{- end }}
{{- if $tls.caConfigMap }}
- --ca
- {{ printf "/etc/apiproxy-load/ca/%s" $tls.caKey | quote }}
{{- end }}
{{- end }}
{{- end }}
