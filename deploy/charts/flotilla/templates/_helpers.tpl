{{/* The release's objects are named after it, so one namespace can hold two hubs. */}}
{{- define "flotilla.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "flotilla.selector" -}}
app.kubernetes.io/name: flotilla
app.kubernetes.io/instance: {{ .Release.Name | toJson }}
{{- end }}

{{- define "flotilla.labels" -}}
{{ include "flotilla.selector" . }}
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/version: {{ .Chart.AppVersion | toJson }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | toJson }}
{{- end }}

{{- define "flotilla.rbacConfigMap" -}}
{{- if .Values.rbac.existingConfigMap -}}
{{ .Values.rbac.existingConfigMap }}
{{- else if or .Values.rbac.policyCsv .Values.rbac.policyDefault -}}
{{ include "flotilla.fullname" . }}-rbac
{{- end -}}
{{- end }}

{{- define "flotilla.validate" -}}
{{- $port := "^[0-9]{1,5}$" -}}
{{- range $name, $service := .Values.service -}}
{{- if not (has $service.type (list "ClusterIP" "NodePort" "LoadBalancer")) -}}
{{- fail (printf "service.%s.type must be ClusterIP, NodePort or LoadBalancer" $name) -}}
{{- end -}}
{{- if not (regexMatch $port (toString $service.port)) -}}
{{- fail (printf "service.%s.port must be a port number" $name) -}}
{{- end -}}
{{- end -}}
{{- with .Values.agentAddress -}}
{{- if not (regexMatch "^([A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$" (toString .)) -}}
{{- fail (printf "agentAddress must be HOST:PORT, not %s" (toJson .)) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[A-Za-z0-9][-._A-Za-z0-9]*$" (toString .Values.rbac.key)) -}}
{{- fail "rbac.key must be a plain file name (letters, digits, '-', '_', '.')" -}}
{{- end -}}
{{- range .Values.tls.extraNames -}}
{{- if not (regexMatch "^[A-Za-z0-9.:*-]+$" (toString .)) -}}
{{- fail (printf "tls.extraNames: %s is not a DNS name or address" (toJson .)) -}}
{{- end -}}
{{- end -}}
{{- end }}
