{{/*
Fixed object names: the APIService names are cluster-wide anyway, so like
metrics-server there is one installation per cluster.
*/}}
{{- define "nodepulse.aggregator.name" -}}nodepulse{{- end }}
{{- define "nodepulse.agent.name" -}}nodepulse-agent{{- end }}
{{- define "nodepulse.ingest.service" -}}nodepulse-ingest{{- end }}

{{/* ServiceAccount names: serviceAccount.<component>Name, else the object's. */}}
{{- define "nodepulse.aggregator.serviceAccount" -}}
{{- .Values.serviceAccount.aggregatorName | default (include "nodepulse.aggregator.name" .) -}}
{{- end }}
{{- define "nodepulse.agent.serviceAccount" -}}
{{- .Values.serviceAccount.agentName | default (include "nodepulse.agent.name" .) -}}
{{- end }}

{{/* DNS name of the headless ingest Service. */}}
{{- define "nodepulse.ingest.host" -}}
{{- printf "%s.%s.svc" (include "nodepulse.ingest.service" .) .Release.Namespace -}}
{{- end }}

{{/*
Labels on every object: the two components.yaml carries, plus Helm's own
(deploy/check.sh ignores the Helm ones). Call with (dict "ctx" $ "component" "agent");
an empty component leaves that label out.
*/}}
{{- define "nodepulse.labels" -}}
app.kubernetes.io/name: nodepulse
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Selector and pod labels. Call with a component name. */}}
{{- define "nodepulse.selectorLabels" -}}
app.kubernetes.io/name: nodepulse
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/*
Extra pod labels (agent.podLabels, aggregator.podLabels), without the selector
labels, which a workload's selector depends on. Call with the map; renders
nothing for an empty one.
*/}}
{{- define "nodepulse.podLabels" -}}
{{- with omit (. | default dict) "app.kubernetes.io/name" "app.kubernetes.io/component" }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "nodepulse.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end }}

{{/*
The ingest CA as a projected volume's source: what the agents check the
aggregators with, and the replicas each other.
*/}}
{{- define "nodepulse.ingest.caSource" -}}
{{- $ca := .Values.ingest.ca }}
{{- if eq .Values.ingest.tls.create "certManager" }}
{{- $ca = dict "kind" "Secret" "name" .Values.ingest.tlsSecretName "key" "ca.crt" }}
{{- end }}
{{- if not (has $ca.kind (list "ConfigMap" "Secret")) }}
{{- fail "ingest.ca.kind must be ConfigMap or Secret" }}
{{- end }}
{{- if eq $ca.kind "Secret" -}}
- secret:
{{- else -}}
- configMap:
{{- end }}
    name: {{ $ca.name }}
    items:
      - key: {{ $ca.key }}
        path: ca.crt
{{- end }}
