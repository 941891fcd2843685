{{/* Chart name, cut to the 63 characters a Kubernetes name allows. */}}
{{- define "login-audit-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name alone when it already holds the chart name. */}}
{{- define "login-audit-bridge.fullname" -}}
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

{{- define "login-audit-bridge.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "login-audit-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "login-audit-bridge.labels" -}}
helm.sh/chart: {{ include "login-audit-bridge.chart" . }}
{{ include "login-audit-bridge.selectorLabels" . }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/component: bridge
{{- /* Constant on purpose: the ServiceMonitor takes job="login-audit-bridge" from it. */}}
app.kubernetes.io/part-of: login-audit-bridge
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels: immutable on a Deployment, so never the chart version. */}}
{{- define "login-audit-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "login-audit-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "login-audit-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "login-audit-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "login-audit-bridge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read BRIDGE_* secrets from: the user's, or the chart's. */}}
{{- define "login-audit-bridge.secretName" -}}
{{- default (include "login-audit-bridge.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "login-audit-bridge.claimName" -}}
{{- default (printf "%s-spool" (include "login-audit-bridge.fullname" .)) .Values.spool.persistence.existingClaim }}
{{- end }}

{{/* Where the data directory (spool, file sink) lives: perPodClaim (a StatefulSet's claim per
pod), sharedClaim (spool.persistence: one claim, one pod) or emptyDir (lost with the pod). auto:
perPodClaim for every sink: a broker sink's spool, and the file sink's files, hold events the pod
acknowledged. emptyDir only when spool.volume says so. */}}
{{- define "login-audit-bridge.spoolVolume" -}}
{{- $v := .Values.spool.volume }}
{{- if ne $v "auto" }}{{ $v }}
{{- else if .Values.spool.persistence.enabled }}sharedClaim
{{- else }}perPodClaim
{{- end }}
{{- end }}

{{/* Where the mounted TLS material lives inside the container. */}}
{{- define "login-audit-bridge.tlsDir" -}}/etc/login-audit-bridge/tls{{- end }}
{{- define "login-audit-bridge.kafkaTlsDir" -}}/etc/login-audit-bridge/kafka-tls{{- end }}
{{- define "login-audit-bridge.rabbitmqTlsDir" -}}/etc/login-audit-bridge/rabbitmq-tls{{- end }}
{{- define "login-audit-bridge.registryTlsDir" -}}/etc/login-audit-bridge/registry-tls{{- end }}

{{/*
The TLS Secrets the bridge's clients read, as a YAML list of name (the volume's), dir (where it
is mounted) and secret: the Kafka or RabbitMQ sink's, and the Schema Registry's. The bridge's
pods and the drain Job mount the same ones.
*/}}
{{- define "login-audit-bridge.clientTlsSecrets" -}}
{{- $s := .Values.sink -}}
{{- if and (eq $s.type "kafka") $s.kafka.tls.secretName }}
- {name: kafka-tls, dir: {{ include "login-audit-bridge.kafkaTlsDir" . | quote }}, secret: {{ $s.kafka.tls.secretName | quote }}}
{{- end }}
{{- if and (eq $s.type "rabbitmq") $s.rabbitmq.tls.secretName }}
- {name: rabbitmq-tls, dir: {{ include "login-audit-bridge.rabbitmqTlsDir" . | quote }}, secret: {{ $s.rabbitmq.tls.secretName | quote }}}
{{- end }}
{{- if and .Values.schemaRegistry.url .Values.schemaRegistry.tls.secretName }}
- {name: registry-tls, dir: {{ include "login-audit-bridge.registryTlsDir" . | quote }}, secret: {{ .Values.schemaRegistry.tls.secretName | quote }}}
{{- end }}
{{- end }}

{{/* volumeMounts entries for clientTlsSecrets: read-only. */}}
{{- define "login-audit-bridge.clientTlsMounts" -}}
{{- range (include "login-audit-bridge.clientTlsSecrets" . | fromYamlArray) }}
- name: {{ .name }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end }}

{{/* volumes entries for clientTlsSecrets: files readable by the owner and group only. */}}
{{- define "login-audit-bridge.clientTlsVolumes" -}}
{{- range (include "login-audit-bridge.clientTlsSecrets" . | fromYamlArray) }}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The values that become BRIDGE_* secrets when no existingSecret is given; empty ones are left out. */}}
{{- define "login-audit-bridge.secretData" -}}
{{- $s := .Values.sink }}
{{- with .Values.auth.tokens }}
BRIDGE_AUTH_TOKENS: {{ join "," . | b64enc | quote }}
{{- end }}
{{- if eq $s.type "kafka" }}
{{- with $s.kafka.sasl.password }}
BRIDGE_KAFKA_SASL_PASSWORD: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.kafka.oauth.clientSecret }}
BRIDGE_KAFKA_OAUTH_CLIENT_SECRET: {{ . | b64enc | quote }}
{{- end }}
{{- with $s.kafka.tls.keyPassword }}
BRIDGE_KAFKA_SSL_KEY_PASSWORD: {{ . | b64enc | quote }}
{{- end }}
{{- end }}
{{- if eq $s.type "rabbitmq" }}
BRIDGE_RABBITMQ_URL: {{ $s.rabbitmq.url | b64enc | quote }}
{{- end }}
{{- with .Values.schemaRegistry.password }}
BRIDGE_SCHEMA_REGISTRY_PASSWORD: {{ . | b64enc | quote }}
{{- end }}
{{- end }}

{{/* Checks that values.schema.json cannot express; each fails the render with a reason. */}}
{{- define "login-audit-bridge.validate" -}}
{{- $p := .Values.spool.persistence }}
{{- if and $p.enabled (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "spool.persistence.enabled needs replicaCount 1 and autoscaling.enabled false: the spool on one claim belongs to one bridge process" }}
{{- end }}
{{- if and $p.enabled (ne .Values.spool.volume "auto") }}
{{- fail (printf "spool.persistence.enabled is the sharedClaim volume: leave spool.volume auto (not %s), or turn persistence off" .Values.spool.volume) }}
{{- end }}
{{- if le (float64 .Values.terminationGracePeriodSeconds) (addf .Values.bridge.shutdownTimeoutSeconds .Values.bridge.shutdownDrainSeconds) }}
{{- fail "terminationGracePeriodSeconds must exceed bridge.shutdownTimeoutSeconds plus bridge.shutdownDrainSeconds, or Kubernetes kills the bridge while it drains" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName" }}
{{- end }}
{{- if and (eq .Values.sink.type "kafka") .Values.sink.kafka.sasl.mechanism (not (hasPrefix "SASL_" .Values.sink.kafka.securityProtocol)) }}
{{- fail "sink.kafka.sasl.mechanism needs sink.kafka.securityProtocol SASL_PLAINTEXT or SASL_SSL" }}
{{- end }}
{{- end }}
