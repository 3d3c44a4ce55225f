{{/* Chart name, truncated to the 63 characters a label value may hold. */}}
{{- define "fathom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name alone when it already contains the chart name. */}}
{{- define "fathom.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of a sub-component: <fullname>-<suffix>, at most 63 characters. */}}
{{- define "fathom.componentName" -}}
{{- printf "%s-%s" (include "fathom.fullname" .root | trunc (int (sub 62 (len .suffix)))) .suffix | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the key /metrics answers (the operator makes it, random, when absent;
     its autoscaler and the ServiceMonitor send it). */}}
{{- define "fathom.metricsKeySecret" -}}
{{- include "fathom.componentName" (dict "root" . "suffix" "metrics-key") }}
{{- end }}

{{- define "fathom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "fathom.labels" -}}
helm.sh/chart: {{ include "fathom.chart" . }}
{{ include "fathom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fathom
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "fathom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fathom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component (operator, otel-collector). Call with (dict "root" $ "component" "operator"). */}}
{{- define "fathom.componentSelectorLabels" -}}
{{ include "fathom.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fathom.componentLabels" -}}
{{ include "fathom.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fathom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fathom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. Call with (dict "image" .Values.x.image "root" $). */}}
{{- define "fathom.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "fathom.otelCollectorName" -}}
{{- include "fathom.componentName" (dict "root" . "suffix" "otel-collector") }}
{{- end }}

{{/* The OTLP endpoint in force: the explicit one, else the bundled collector's Service, else empty. */}}
{{- define "fathom.otlpEndpoint" -}}
{{- if .Values.telemetry.otlpEndpoint }}
{{- .Values.telemetry.otlpEndpoint }}
{{- else if .Values.otelCollector.enabled }}
{{- $port := ternary 4317 4318 (eq .Values.telemetry.otlpProtocol "grpc") }}
{{- printf "http://%s.%s.svc:%d" (include "fathom.otelCollectorName" .) .Release.Namespace $port }}
{{- end }}
{{- end }}

{{/* OTEL_* environment (EnvVar list) for a service name. Call with (dict "root" $ "service" "fathom-operator"). */}}
{{- define "fathom.otelEnv" -}}
{{- $endpoint := include "fathom.otlpEndpoint" .root }}
{{- $t := .root.Values.telemetry }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- if $endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $t.otlpProtocol | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_TRACES_SAMPLER
  value: {{ $t.tracesSampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $t.tracesSamplerArg | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- $attrs := list (printf "service.namespace=%s" .root.Release.Namespace) }}
{{- range $k, $v := $t.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $v) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end }}

{{/* Namespaces whose Fathom Ray pods the chart fences with a NetworkPolicy: those of chart-rendered
     ModelServices, the operator's watched namespaces and networkPolicy.extraNamespaces (the
     release namespace when that is all empty); unique, sorted. */}}
{{- define "fathom.modelServiceNamespaces" -}}
{{- $nss := concat .Values.operator.watchNamespaces .Values.networkPolicy.extraNamespaces }}
{{- range .Values.modelServices }}
{{- $nss = append $nss (default $.Release.Namespace .namespace) }}
{{- end }}
{{- if not $nss }}{{ $nss = list .Release.Namespace }}{{ end }}
{{- toJson ($nss | uniq | sortAlpha) }}
{{- end }}

{{/* Fail when a chart-rendered resource sits in a namespace the operator does not watch.
     Call with (dict "root" $ "kind" "ModelService" "item" $item). */}}
{{- define "fathom.checkWatched" -}}
{{- $watch := .root.Values.operator.watchNamespaces }}
{{- $ns := default .root.Release.Namespace .item.namespace }}
{{- if and .root.Values.operator.enabled $watch (not (has $ns $watch)) }}
{{- fail (printf "%s %q is in namespace %q, which operator.watchNamespaces %v leaves unwatched: add the namespace or move the %s" .kind .item.name $ns $watch .kind) }}
{{- end }}
{{- end }}
