{{/* Labels on every object; the cleanup `flotilla cluster rm` prints selects by the name label. */}}
{{- define "flotilla-agent.labels" -}}
app.kubernetes.io/name: flotilla-agent
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/instance: {{ .Release.Name | toJson }}
app.kubernetes.io/version: {{ .Chart.AppVersion | toJson }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | toJson }}
{{- end }}

{{/*
Every value that reaches a manifest is checked here first, and written with toJson
afterwards: a value can neither break the YAML nor become another key.
*/}}
{{- define "flotilla-agent.validate" -}}
{{- $label := "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" -}}
{{- if not (regexMatch $label (toString .Values.cluster)) -}}
{{- fail (printf "cluster must be a DNS label (lowercase letters, digits and '-', at most 63), not %s" (toJson .Values.cluster)) -}}
{{- end -}}
{{- if not (regexMatch "^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$" (toString .Values.hub.address)) -}}
{{- fail (printf "hub.address must be HOST:PORT, not %s" (toJson .Values.hub.address)) -}}
{{- end -}}
{{- if not (regexMatch "^[0-9a-f]{64}$" (toString .Values.hub.caFingerprint)) -}}
{{- fail "hub.caFingerprint must be the 64 hex digits `flotilla cluster add` prints" -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9_]{1,200}$" (toString .Values.token)) -}}
{{- fail "token must be the bootstrap token `flotilla cluster add` prints" -}}
{{- end -}}
{{- if not (kindIs "slice" .Values.namespaces) -}}
{{- fail "namespaces must be a list" -}}
{{- end -}}
{{- range .Values.namespaces -}}
{{- if not (regexMatch $label (toString .)) -}}
{{- fail (printf "namespaces: %s is not a DNS label" (toJson .)) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{- define "flotilla-agent.subjects" -}}
- kind: ServiceAccount
  name: flotilla-agent
  namespace: {{ .Release.Namespace | toJson }}
{{- end }}
