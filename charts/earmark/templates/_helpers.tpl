{{/*
The services this chart deploys, in start order. Their ports, images and settings
live under .Values.<service>.
*/}}
{{- define "earmark.services" -}}
fingerprint search ingest features monitor
{{- end }}

{{/*
Workers: processes with no API of their own. Each is a Deployment like a service (replicas,
resources, HPA, PDB, KEDA under .Values.<worker>) but gets no Service: its gRPC port
carries only grpc.health.v1 and reflection, for the probes. A worker runs from another
service's image with the command overridden (earmark.workerImage, earmark.workerModule).
*/}}
{{- define "earmark.workers" -}}
transcoder
{{- end }}

{{/* Every Deployment: the services, then the workers. */}}
{{- define "earmark.deployments" -}}
{{ include "earmark.services" . }} {{ include "earmark.workers" . }}
{{- end }}

{{/* The service whose image a worker runs. */}}
{{- define "earmark.workerImage" -}}
{{- $m := dict "transcoder" "ingest" -}}
{{- get $m . -}}
{{- end }}

{{/* The module a worker runs (`python -m <module>`). */}}
{{- define "earmark.workerModule" -}}
{{- $m := dict "transcoder" "earmark_ingest.transcoder" -}}
{{- get $m . -}}
{{- end }}

{{/* Services that use PostgreSQL (they apply their schema on start). */}}
{{- define "earmark.databaseServices" -}}
search ingest features monitor
{{- end }}

{{/* The module holding SCHEMA and MIGRATIONS of each database service. */}}
{{- define "earmark.migrationsModule" -}}
{{- $m := dict "ingest" "earmark_ingest.schema" "search" "earmark_search.schema" "features" "earmark_features.app" "monitor" "earmark_monitor.schema" -}}
{{- get $m . -}}
{{- end }}

{{- define "earmark.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated so that "<fullname>-<component>-headless" and
StatefulSet pod names stay within Kubernetes' limits.
*/}}
{{- define "earmark.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "earmark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "earmark.labels" -}}
helm.sh/chart: {{ include "earmark.chart" . }}
{{ include "earmark.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: earmark
{{- end }}

{{/* Selector labels. */}}
{{- define "earmark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earmark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Call with (dict "root" $ "component" "ingest").
*/}}
{{- define "earmark.componentLabels" -}}
{{ include "earmark.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "earmark.componentSelectorLabels" -}}
{{ include "earmark.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "earmark.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "earmark.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image of a service. Call with (dict "root" $ "service" "fingerprint").
*/}}
{{- define "earmark.image" -}}
{{- $root := .root -}}
{{- $v := $root.Values.image -}}
{{- $tag := default $root.Chart.AppVersion $v.tag -}}
{{- if and (eq .service "fingerprint") $root.Values.fingerprint.gpu.enabled -}}
{{- $tag = default (printf "%s-gpu" $tag) $root.Values.fingerprint.gpu.imageTag -}}
{{- end -}}
{{- $repo := printf "%s/%s" $v.repositoryPrefix .service | trimPrefix "/" -}}
{{- if $v.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $v.registry) $repo $tag -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}
{{- end }}

{{/* Names of the generated Secret and ConfigMap. */}}
{{- define "earmark.secretName" -}}
{{- printf "%s-secrets" (include "earmark.fullname" .) }}
{{- end }}

{{- define "earmark.configName" -}}
{{- printf "%s-config" (include "earmark.fullname" .) }}
{{- end }}

{{- define "earmark.natsName" -}}
{{- printf "%s-nats" (include "earmark.fullname" .) }}
{{- end }}

{{- define "earmark.postgresName" -}}
{{- printf "%s-postgresql" (include "earmark.fullname" .) }}
{{- end }}

{{- define "earmark.milvusName" -}}
{{- printf "%s-milvus" (include "earmark.fullname" .) }}
{{- end }}

{{/* Fail early on contradictory values. */}}
{{- define "earmark.validate" -}}
{{- if and .Values.nats.enabled (or .Values.externalNats.url .Values.externalNats.existingSecret) }}
{{- fail "set nats.enabled=false to use externalNats" }}
{{- end }}
{{- if and (not .Values.nats.enabled) (not (or .Values.externalNats.url .Values.externalNats.existingSecret)) }}
{{- fail "nats.enabled=false needs externalNats.url or externalNats.existingSecret" }}
{{- end }}
{{- if and .Values.postgresql.enabled (or .Values.externalPostgres.url .Values.externalPostgres.existingSecret) }}
{{- fail "set postgresql.enabled=false to use externalPostgres" }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) (not (or .Values.externalPostgres.url .Values.externalPostgres.existingSecret)) }}
{{- fail "postgresql.enabled=false needs externalPostgres.url or externalPostgres.existingSecret" }}
{{- end }}
{{- if and .Values.milvus.enabled .Values.externalMilvus.uri }}
{{- fail "set milvus.enabled=false to use externalMilvus" }}
{{- end }}
{{- if and .Values.auth.enabled (not (and .Values.auth.existingSecret .Values.auth.serviceKeySecret)) }}
{{- fail "auth.enabled needs auth.existingSecret (the keys file) and auth.serviceKeySecret (the services' own key)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret (tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- range $svc := splitList " " (include "earmark.deployments" .) }}
{{- $s := index $.Values $svc }}
{{- if and $s.autoscaling.enabled $s.keda.enabled }}
{{- fail (printf "%s: enable either autoscaling (HPA) or keda, not both" $svc) }}
{{- end }}
{{- end }}
{{- end }}

{{/* In-cluster NATS URL (nats:// to the client Service). */}}
{{- define "earmark.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "earmark.natsName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalNats.url -}}
{{- end -}}
{{- end }}

{{/* host:port of NATS' monitoring endpoint, for KEDA. */}}
{{- define "earmark.natsMonitoringEndpoint" -}}
{{- if .Values.nats.enabled -}}
{{- printf "%s-headless.%s.svc.cluster.local:8222" (include "earmark.natsName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalNats.monitoringEndpoint -}}
{{- end -}}
{{- end }}

{{/* Milvus URI for the (future) vector store; empty when none is configured. */}}
{{- define "earmark.milvusUri" -}}
{{- if .Values.milvus.enabled -}}
{{- printf "http://%s.%s.svc:19530" (include "earmark.milvusName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalMilvus.uri -}}
{{- end -}}
{{- end }}

{{/*
The in-cluster PostgreSQL password: from values, else the one already stored in the
release's Secret (so upgrades keep it), else a new random one. Memoised in .Values so
every template of one render sees the same password.
*/}}
{{- define "earmark.postgresPassword" -}}
{{- if not (hasKey .Values.postgresql.auth "_resolved") -}}
{{- $pw := .Values.postgresql.auth.password -}}
{{- if not $pw -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "earmark.secretName" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "postgres-password") -}}
{{- $pw = index $existing.data "postgres-password" | b64dec -}}
{{- else -}}
{{- $pw = randAlphaNum 24 -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values.postgresql.auth "_resolved" $pw -}}
{{- end -}}
{{- .Values.postgresql.auth._resolved -}}
{{- end }}

{{- define "earmark.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- $a := .Values.postgresql.auth -}}
{{- printf "postgresql://%s:%s@%s.%s.svc:5432/%s" $a.username (include "earmark.postgresPassword" . | urlquery) (include "earmark.postgresName" .) .Release.Namespace $a.database -}}
{{- else -}}
{{- .Values.externalPostgres.url -}}
{{- end -}}
{{- end }}

{{/* env entries for the NATS URL (every service). */}}
{{- define "earmark.natsEnv" -}}
- name: EARMARK_NATS_URL
  valueFrom:
    secretKeyRef:
      {{- if and (not .Values.nats.enabled) .Values.externalNats.existingSecret }}
      name: {{ .Values.externalNats.existingSecret }}
      key: {{ .Values.externalNats.existingSecretKey }}
      {{- else }}
      name: {{ include "earmark.secretName" . }}
      key: nats-url
      {{- end }}
{{- end }}

{{/* env entries for the database URL (database services and the migrations Job). */}}
{{- define "earmark.databaseEnv" -}}
- name: EARMARK_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if and (not .Values.postgresql.enabled) .Values.externalPostgres.existingSecret }}
      name: {{ .Values.externalPostgres.existingSecret }}
      key: {{ .Values.externalPostgres.existingSecretKey }}
      {{- else }}
      name: {{ include "earmark.secretName" . }}
      key: database-url
      {{- end }}
{{- end }}

{{/* Where the keys file and the certificates are mounted (read-only). */}}
{{- define "earmark.authDir" -}}/etc/earmark/auth{{- end }}
{{- define "earmark.tlsDir" -}}/etc/earmark/tls{{- end }}

{{/*
env entries for API keys and TLS, from the Secrets named in .Values.auth and .Values.tls
(every Deployment; nothing when both are off).
*/}}
{{- define "earmark.securityEnv" -}}
{{- if .Values.auth.enabled }}
- name: EARMARK_API_KEYS_FILE
  value: {{ include "earmark.authDir" . }}/keys.json
- name: EARMARK_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.serviceKeySecret }}
      key: {{ .Values.auth.serviceKeySecretKey }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: EARMARK_TLS_CERT
  value: {{ include "earmark.tlsDir" . }}/tls.crt
- name: EARMARK_TLS_KEY
  value: {{ include "earmark.tlsDir" . }}/tls.key
# With a CA the servers require client certificates and the services verify each other.
- name: EARMARK_TLS_CA
  value: {{ include "earmark.tlsDir" . }}/ca.crt
{{- end }}
{{- end }}

{{- define "earmark.securityMounts" -}}
{{- if .Values.auth.enabled }}
- name: api-keys
  mountPath: {{ include "earmark.authDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "earmark.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Secret volumes; 0440 with the pod's fsGroup: readable by the service user only. */}}
{{- define "earmark.securityVolumes" -}}
{{- if .Values.auth.enabled }}
- name: api-keys
  secret:
    secretName: {{ .Values.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.keysFileKey }}
        path: keys.json
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 0440
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- end }}

{{/*
How a probe asks for health. Call with (dict "root" $ "port" port). Plaintext: kubelet's
native gRPC probe. TLS: kubelet cannot speak it (nor present a client certificate), so
the container checks itself over loopback with its mounted certificate.
*/}}
{{- define "earmark.probeAction" -}}
{{- if .root.Values.tls.enabled }}
exec:
  command: ["python", "-m", "earmark_runtime.healthcheck", "--port", {{ .port | quote }}, "--server-name", {{ .root.Values.tls.probeServerName | quote }}]
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
{{- end }}
