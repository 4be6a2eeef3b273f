{{/* Labels on every object. */}}
{{- define "loupe.labels" -}}
app.kubernetes.io/name: loupe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loupe
{{- end -}}

{{/* The agent's pods. */}}
{{- define "loupe.selector" -}}
app.kubernetes.io/name: loupe
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}
