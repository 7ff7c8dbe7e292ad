{{/* Names and labels shared by every object. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: `include "ferry.selector" (list . "scheduler")`. */}}
{{- define "ferry.selector" -}}
app.kubernetes.io/name: {{ (index . 0).Chart.Name }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Every scheduler pod by its stable name: the daemons' `scheduler` list. */}}
{{- define "ferry.schedulers" -}}
{{- $name := include "ferry.fullname" . -}}
{{- $list := list -}}
{{- range $i := until (int .Values.scheduler.replicas) -}}
{{- $list = append $list (printf "%s-scheduler-%d.%s-scheduler.%s.svc:%d" $name $i $name $.Release.Namespace (int $.Values.scheduler.port)) -}}
{{- end -}}
{{- toJson $list -}}
{{- end -}}

{{/* The manager's gRPC address, through its Service. */}}
{{- define "ferry.managerGrpc" -}}
{{- printf "%s-manager.%s.svc:%d" (include "ferry.fullname" .) .Release.Namespace (int .Values.manager.grpcPort) -}}
{{- end -}}

{{/* A map as TOML `key = value` lines (strings quoted, lists as arrays). */}}
{{- define "ferry.toml" -}}
{{- range $k, $v := . }}
{{ $k }} = {{ include "ferry.tomlValue" $v }}
{{- end }}
{{- end -}}

{{- define "ferry.tomlValue" -}}
{{- if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "ferry.tomlValue" $e }}{{ end }}]
{{- else if kindIs "string" . -}}
{{ . | quote }}
{{- else if kindIs "float64" . -}}
{{ int64 . }}
{{- else -}}
{{ . }}
{{- end -}}
{{- end -}}
