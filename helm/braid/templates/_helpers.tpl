{{/*
Names. Every object is named after the release, so that the cluster-scoped ones (ClusterRoles,
ClusterRoleBindings, the MutatingWebhookConfiguration) of two releases never collide. The prefix
is at most 54 characters, so "PREFIX-operator" still fits a 63-character DNS label.
*/}}
{{- define "braid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" }}
{{- end }}

{{- define "braid.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "braid.operator.name" -}}
{{- printf "%s-operator" (include "braid.fullname" .) }}
{{- end }}

{{- define "braid.webhook.name" -}}
{{- printf "%s-webhook" (include "braid.fullname" .) }}
{{- end }}

{{/*
The operator's identity endpoint (POST /v1/certify): its Service, whose name the endpoint's
certificate carries (NAME.NAMESPACE.svc) and which injected proxies are given by the webhook, so
all three must agree. "braid-identity" for a release named braid. At most 63 characters.
*/}}
{{- define "braid.identity.name" -}}
{{- printf "%s-identity" (include "braid.fullname" .) }}
{{- end }}

{{- define "braid.identity.port" -}}
8080
{{- end }}

{{/*
The operator's discovery endpoint (HTTP/2, mTLS; docs/discovery.md): its Service, whose name the
endpoint's certificate carries and which injected proxies are given by the webhook. It runs with
the identity endpoint, whose CA issues the certificates both sides present.
*/}}
{{- define "braid.discovery.name" -}}
{{- printf "%s-discovery" (include "braid.fullname" .) }}
{{- end }}

{{- define "braid.discovery.port" -}}
8086
{{- end }}

{{/* The webhook's Service and its MutatingWebhookConfiguration share the name. */}}
{{- define "braid.webhookConfig.name" -}}
{{- include "braid.webhook.name" . }}
{{- end }}

{{/* The Secret the operator writes the webhook's serving certificate into (a fixed name). */}}
{{- define "braid.webhookTlsSecret" -}}
braid-webhook-tls
{{- end }}

{{/* An image of the release: REGISTRY/NAME@DIGEST when image.digests.KEY is set, else REGISTRY/NAME:TAG;
call with (dict "ctx" $ "image" "braid-operator" "key" "operator"). */}}
{{- define "braid.image" -}}
{{- $digest := get (.ctx.Values.image.digests | default dict) .key }}
{{- if $digest }}
{{- printf "%s/%s@%s" .ctx.Values.image.registry .image $digest }}
{{- else }}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .image (default .ctx.Chart.AppVersion .ctx.Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Labels on every object; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "braid.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: braid
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "braid.selectorLabels" . }}
{{- end }}

{{- define "braid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "braid.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Pod and container security shared by both Deployments: non-root, nothing writable, no privileges. */}}
{{- define "braid.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "braid.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{/* Spread the replicas over nodes when there are several; never required, so one node works. */}}
{{- define "braid.antiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "braid.selectorLabels" . | nindent 12 }}
{{- end }}
