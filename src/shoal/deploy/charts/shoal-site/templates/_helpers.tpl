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

{{/* The data claim (values .data), checked once: a PVC name and a file name in it. */}}
{{- define "shoal.dataCheck" -}}
{{- with .claim }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" .) }}
{{- fail (printf "data.claim %q: not a PVC name" .) }}
{{- end }}
{{- end }}
{{- if or (contains "/" .mnistFile) (has .mnistFile (list "" "." "..")) }}
{{- fail (printf "data.mnistFile %q: a file name inside the claim" .mnistFile) }}
{{- end }}
{{- end }}

{{/* The data claim's env, mount and volume (ctx: the data values, part): the
same switch for the server and the sites, whoever runs the job code that
needs the data gets it. */}}
{{- define "shoal.data" -}}
{{- if .data.claim }}
{{- if eq .part "env" }}
- name: SHOAL_DATA_PATHS
  value: /data
- name: SHOAL_MNIST_PATH
  value: {{ printf "/data/%s" .data.mnistFile | quote }}
{{- else if eq .part "mount" }}
- name: data
  mountPath: /data
  readOnly: true
{{- else if eq .part "volume" }}
- name: data
  persistentVolumeClaim:
    claimName: {{ .data.claim }}
    readOnly: true
{{- end }}
{{- end }}
{{- end }}
