{{/* Names, labels and the values several templates derive from. */}}

{{- define "localmoe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "localmoe.fullname" -}}
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

{{/* Labels of every object; pass (dict "ctx" $ "component" "gateway"). */}}
{{- define "localmoe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: localmoe
{{ include "localmoe.selectorLabels" . }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels a component's pods carry and its selectors match. */}}
{{- define "localmoe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "localmoe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "localmoe.gatewayName" -}}{{ include "localmoe.fullname" . }}-gateway{{- end }}
{{- define "localmoe.tritonName" -}}{{ include "localmoe.fullname" . }}-triton{{- end }}
{{- define "localmoe.tritonHeadless" -}}{{ include "localmoe.fullname" . }}-triton-headless{{- end }}
{{- define "localmoe.redisName" -}}{{ include "localmoe.fullname" . }}-redis{{- end }}
{{- define "localmoe.modelClaim" -}}
{{- .Values.triton.modelStorage.existingClaim | default (printf "%s-models" (include "localmoe.fullname" .)) }}
{{- end }}

{{- define "localmoe.gatewayImage" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (.Values.gateway.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- define "localmoe.tritonCpuImage" -}}
{{- printf "%s:%s" .Values.triton.cpu.image.repository (.Values.triton.cpu.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Whether a key source other than the HS256 secret is configured ("true" or ""). */}}
{{- define "localmoe.otherKey" -}}
{{- $a := .Values.auth }}
{{- if or $a.publicKey.existingSecret $a.publicKey.pem $a.jwksUrl $a.jwksUrlSecret.existingSecret $a.jwksFile.existingSecret }}true{{ end }}
{{- end }}

{{/* The HS256 secret's Secret, when one is configured ("" otherwise): yours, or the generated
one, which `create` makes only when no other key source is set. */}}
{{- define "localmoe.jwtSecretName" -}}
{{- if .Values.auth.jwtSecret.existingSecret }}{{ .Values.auth.jwtSecret.existingSecret }}
{{- else if and .Values.auth.jwtSecret.create (not (include "localmoe.otherKey" .)) }}{{ include "localmoe.fullname" . }}-jwt
{{- end }}
{{- end }}

{{/* The Secret holding the PEM public key ("" when none). */}}
{{- define "localmoe.publicKeySecret" -}}
{{- if .Values.auth.publicKey.existingSecret }}{{ .Values.auth.publicKey.existingSecret }}
{{- else if .Values.auth.publicKey.pem }}{{ include "localmoe.fullname" . }}-public-key
{{- end }}
{{- end }}

{{/* The Secret holding the external Redis URL ("" when Redis is internal or off). */}}
{{- define "localmoe.redisUrlSecret" -}}
{{- if eq .Values.redis.mode "external" }}
{{- .Values.redis.external.existingSecret | default (printf "%s-redis-url" (include "localmoe.fullname" .)) }}
{{- end }}
{{- end }}

{{/* Where the gateway finds the tokenizer: the path Triton's repository names. */}}
{{- define "localmoe.tokenizerSource" -}}
{{- $source := .Values.gateway.tokenizer.source }}
{{- if eq $source "auto" }}
{{- if eq .Values.triton.profile "cpu" }}image{{ else }}modelVolume{{ end }}
{{- else }}{{ $source }}{{ end }}
{{- end }}
{{- define "localmoe.cpuModelDir" -}}{{ .Values.triton.cpu.home }}/models/tiny-moe{{- end }}
{{- define "localmoe.cpuRepositoryDir" -}}{{ .Values.triton.cpu.home }}/repository/cpu{{- end }}

{{/* Seconds the gateway needs between the delete and the end of its drain. */}}
{{- define "localmoe.gatewayGracePeriod" -}}
{{- $d := .Values.gateway.drain }}
{{- add $d.preStopSleepSeconds $d.timeoutSeconds $d.marginSeconds }}
{{- end }}

{{/* The highest number of Triton pods the chart may run at once. */}}
{{- define "localmoe.tritonMaxReplicas" -}}
{{- if or .Values.triton.autoscaling.enabled .Values.triton.autoscaling.keda.enabled }}
{{- .Values.triton.autoscaling.maxReplicas }}
{{- else }}{{ .Values.triton.replicas }}{{ end }}
{{- end }}

{{/* Labels Prometheus selects monitors and rules by. */}}
{{- define "localmoe.monitoringLabels" -}}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A container's securityContext: no privilege, nothing written outside volumes. */}}
{{- define "localmoe.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}
