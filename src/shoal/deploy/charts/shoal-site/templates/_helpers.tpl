{{/* Labels that select this participant's pods (the same as `shoal deploy k8s`). */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/instance: {{ .root.Values.participant }}
app.kubernetes.io/name: shoal
{{- end }}

{{/* Every object's labels. */}}
{{- define "shoal.labels" -}}
{{ include "shoal.selectorLabels" . }}
app.kubernetes.io/part-of: {{ .root.Values.project }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* repository:tag or repository@digest. */}}
{{- define "shoal.image" -}}
{{- if .digest -}}
{{ .repository }}@{{ .digest }}
{{- else -}}
{{ .repository }}:{{ .tag }}
{{- end -}}
{{- end }}

{{/* IfNotPresent only for an image by digest: a tag can move. */}}
{{- define "shoal.pullPolicy" -}}
{{- if .pullPolicy -}}
{{- if and (eq .pullPolicy "IfNotPresent") (not .digest) -}}
{{- fail "image.pullPolicy IfNotPresent with a tag: nodes could run different code; set image.digest or use Always" -}}
{{- end -}}
{{ .pullPolicy }}
{{- else if .digest -}}
IfNotPresent
{{- else -}}
Always
{{- end -}}
{{- end }}
