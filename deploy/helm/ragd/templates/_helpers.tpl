{{/* Names. */}}
{{- define "ragd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: include with (dict "ctx" $ "component" "writer"). */}}
{{- define "ragd.labels" -}}
helm.sh/chart: {{ include "ragd.chart" .ctx }}
{{ include "ragd.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: ragd
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ragd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ragd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragd.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* In-cluster addresses. */}}
{{- define "ragd.writerAddress" -}}
{{- printf "http://%s-writer.%s.svc.cluster.local:%d" (include "ragd.fullname" .) .Release.Namespace (int .Values.service.grpcPort) -}}
{{- end -}}

{{- define "ragd.llamaServerUrl" -}}
{{- printf "http://%s-llama-server.%s.svc.cluster.local:%d/v1" (include "ragd.fullname" .) .Release.Namespace (int .Values.llamaServer.port) -}}
{{- end -}}

{{- define "ragd.etcdHeadless" -}}
{{- printf "%s-etcd-headless" (include "ragd.fullname" .) -}}
{{- end -}}

{{/* etcd client URLs ragd uses, as a JSON list. */}}
{{- define "ragd.etcdEndpoints" -}}
{{- $out := list -}}
{{- if .Values.etcd.deploy -}}
{{- $full := include "ragd.fullname" . -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $out = append $out (printf "http://%s-etcd-%d.%s.%s.svc.cluster.local:2379" $full $i (include "ragd.etcdHeadless" $) $.Release.Namespace) -}}
{{- end -}}
{{- else -}}
{{- $out = .Values.etcd.endpoints | default list -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Checks of combinations ragd or the chart cannot run with. */}}
{{- define "ragd.validate" -}}
{{- $etcd := include "ragd.etcdEndpoints" . | fromJsonArray -}}
{{- if and .Values.replica.enabled (not .Values.objectStorage.url) -}}
{{- fail "replica.enabled needs objectStorage.url (the bucket the writer publishes to and the replicas download from)" -}}
{{- end -}}
{{- if and $etcd (not .Values.objectStorage.url) -}}
{{- fail "etcd (etcd.deploy or etcd.endpoints) needs objectStorage.url: the pointers name generations published there" -}}
{{- end -}}
{{- if and .Values.proxy.enabled (not .Values.replica.enabled) -}}
{{- fail "proxy.enabled balances over the read replicas: set replica.enabled" -}}
{{- end -}}
{{- if and .Values.llamaServer.enabled (not .Values.llamaServer.model.existingClaim) (not .Values.llamaServer.model.url) -}}
{{- fail "llamaServer.enabled needs llamaServer.model.existingClaim or llamaServer.model.url" -}}
{{- end -}}
{{- if and .Values.rebuild.enabled (not .Values.rebuild.collections) -}}
{{- fail "rebuild.enabled needs rebuild.collections" -}}
{{- end -}}
{{- if and .Values.etcd.deploy (lt (int .Values.etcd.replicas) 1) -}}
{{- fail "etcd.replicas must be at least 1" -}}
{{- end -}}
{{- end -}}

{{/* Deep merge of .src into the map .dst, in place (unlike mergeOverwrite, false, 0 and ""
     in .src do override). */}}
{{- define "ragd.deepMerge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "ragd.deepMerge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* TOML. Keys: bare when they can be, else quoted. */}}
{{- define "ragd.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{/* A value: strings quoted (JSON escapes are TOML escapes), whole numbers as integers
     (Helm reads every YAML number as a float), lists as arrays, maps as inline tables. */}}
{{- define "ragd.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (floor $v) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "ragd.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- $first := true -}}{{ range $k, $e := $v }}{{ if not (kindIs "invalid" $e) }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "ragd.tomlKey" $k }} = {{ include "ragd.tomlValue" $e }}{{ end }}{{ end }} }
{{- else -}}{{ fail (printf "ragd settings: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/* A settings document: top-level keys, then one [table] per map (maps inside a table
     become inline tables); null values are left out. */}}
{{- define "ragd.toml" -}}
{{- range $k, $v := . }}
{{- if not (or (kindIs "map" $v) (kindIs "invalid" $v)) }}
{{ include "ragd.tomlKey" $k }} = {{ include "ragd.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}

[{{ include "ragd.tomlKey" $k }}]
{{- range $k2, $v2 := $v }}
{{- if not (kindIs "invalid" $v2) }}
{{ include "ragd.tomlKey" $k2 }} = {{ include "ragd.tomlValue" $v2 }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Settings common to the writer and the replicas, merged with .extra (the role's config). */}}
{{- define "ragd.baseConfig" -}}
{{- $ctx := .ctx -}}
{{- $c := dict -}}
{{- include "ragd.deepMerge" (dict "dst" $c "src" (deepCopy ($ctx.Values.config | default dict))) -}}
{{- include "ragd.deepMerge" (dict "dst" $c "src" (deepCopy (.extra | default dict))) -}}
{{- $_ := set $c "listen" (printf "0.0.0.0:%d" (int $ctx.Values.service.grpcPort)) -}}
{{- $_ = set $c "metrics_listen" (printf "0.0.0.0:%d" (int $ctx.Values.service.metricsPort)) -}}
{{- $_ = set $c "data_dir" "/var/lib/ragd/indexes" -}}
{{- $_ = set $c "models_dir" "/var/lib/ragd/models" -}}
{{- if $ctx.Values.llamaServer.enabled -}}
{{- if not (kindIs "map" (get $c "decoder")) -}}{{- $_ = set $c "decoder" dict -}}{{- end -}}
{{- $_ = set $c.decoder "url" (include "ragd.llamaServerUrl" $ctx) -}}
{{- with $ctx.Values.llamaServer.answerStrategy -}}
{{- if not (kindIs "map" (get $c "answer")) -}}{{- $_ = set $c "answer" dict -}}{{- end -}}
{{- $_ = set $c.answer "strategy" . -}}
{{- end -}}
{{- end -}}
{{- $_ = unset $c "publish" -}}
{{- $_ = unset $c "replica" -}}
{{- toJson $c -}}
{{- end -}}

{{/* object_store options: every value a string (aws_allow_http: true becomes "true"). */}}
{{- define "ragd.storeOptions" -}}
{{- $o := dict -}}
{{- range $k, $v := (.Values.objectStorage.options | default dict) -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $s := $v -}}
{{- if not (kindIs "string" $v) -}}{{- $s = include "ragd.tomlValue" $v -}}{{- end -}}
{{- $_ := set $o $k $s -}}
{{- end -}}
{{- end -}}
{{- toJson $o -}}
{{- end -}}

{{- define "ragd.writerConfig" -}}
{{- $c := include "ragd.baseConfig" (dict "ctx" . "extra" .Values.writer.config) | fromJson -}}
{{- $etcd := include "ragd.etcdEndpoints" . | fromJsonArray -}}
{{- $publish := dict "url" (.Values.objectStorage.url | default "") "etcd" $etcd "keep" .Values.writer.publishKeep -}}
{{- $_ := set $publish "options" (include "ragd.storeOptions" . | fromJson) -}}
{{- $_ := set $c "publish" $publish -}}
{{- include "ragd.toml" $c -}}
{{- end -}}

{{- define "ragd.replicaConfig" -}}
{{- $c := include "ragd.baseConfig" (dict "ctx" . "extra" .Values.replica.config) | fromJson -}}
{{- $etcd := include "ragd.etcdEndpoints" . | fromJsonArray -}}
{{- $replica := dict "enabled" true "url" (.Values.objectStorage.url | default "") "etcd" $etcd "writer" (default (include "ragd.writerAddress" .) .Values.writer.externalAddress) "poll_seconds" .Values.replica.pollSeconds "lease_seconds" .Values.replica.leaseSeconds -}}
{{- $_ := set $replica "options" (include "ragd.storeOptions" . | fromJson) -}}
{{- $_ := set $c "replica" $replica -}}
{{- include "ragd.toml" $c -}}
{{- end -}}

{{/* Environment of the writer and replica containers. */}}
{{- define "ragd.env" -}}
- name: HOME
  value: /var/lib/ragd
- name: RAGD_DATA_DIR
  value: /var/lib/ragd/indexes
- name: RAGD_MODELS
  value: /var/lib/ragd/models
- name: RAGD_MODELS_DIR
  value: /var/lib/ragd/models
{{- if .Values.apiKeys.existingSecret }}
- name: RAGD_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ .Values.apiKeys.existingSecret }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- with .Values.objectStorage.env }}
{{ toYaml . }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "ragd.envFrom" -}}
{{- if .Values.objectStorage.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.objectStorage.existingSecret }}
{{- end }}
{{- end -}}

{{/* The initContainer that installs the models into the models volume. */}}
{{- define "ragd.modelsInit" -}}
{{- if and .Values.models.fetch (not .Values.models.existingClaim) }}
initContainers:
  - name: models-fetch
    image: {{ include "ragd.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["ragd", "models", "fetch", "--models-dir", "/var/lib/ragd/models"]
    env:
      - name: HOME
        value: /var/lib/ragd
      - name: RAGD_MODELS
        value: /var/lib/ragd/models
      {{- with .Values.models.env }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    resources:
      {{- toYaml .Values.models.resources | nindent 6 }}
    volumeMounts:
      - name: data
        mountPath: /var/lib/ragd
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end -}}

{{/* Probes of the writer and replica containers. */}}
{{- define "ragd.probes" -}}
startupProbe:
  httpGet:
    path: /metrics
    port: metrics
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
readinessProbe:
  grpc:
    port: {{ .Values.service.grpcPort }}
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /metrics
    port: metrics
  initialDelaySeconds: {{ .Values.probes.liveness.initialDelaySeconds }}
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
{{- end -}}

{{- define "ragd.ports" -}}
ports:
  - name: grpc
    containerPort: {{ .Values.service.grpcPort }}
    protocol: TCP
  - name: metrics
    containerPort: {{ .Values.service.metricsPort }}
    protocol: TCP
{{- end -}}

{{/* Volumes shared by the writer and the replicas (data is theirs). */}}
{{- define "ragd.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "ragd.fullname" .ctx }}-config
    items:
      - key: {{ .toml }}
        path: ragd.toml
- name: tmp
  emptyDir: {}
{{- if .ctx.Values.models.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .ctx.Values.models.existingClaim }}
    readOnly: true
{{- end }}
{{- end -}}

{{- define "ragd.volumeMounts" -}}
volumeMounts:
  - name: data
    mountPath: /var/lib/ragd
  - name: config
    mountPath: /etc/ragd
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- if .Values.models.existingClaim }}
  - name: models
    mountPath: /var/lib/ragd/models
    readOnly: true
    {{- with .Values.models.subPath }}
    subPath: {{ . }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* One `ragd rebuild` container of the rebuild CronJob: (dict "ctx" $ "index" N "collection" NAME). */}}
{{- define "ragd.rebuildContainer" -}}
- name: {{ printf "rebuild-%d" .index }}
  image: {{ include "ragd.image" .ctx }}
  imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
  command: ["ragd", "rebuild", "--collection", {{ .collection | quote }}{{ range .ctx.Values.rebuild.args }}, {{ . | quote }}{{ end }}]
  env:
    - name: HOME
      value: /tmp
    # The writer: rebuilds run there, over gRPC (replicas pick the new generation up).
    - name: RAGD_SERVER
      value: {{ include "ragd.writerAddress" .ctx | quote }}
    {{- if .ctx.Values.apiKeys.existingSecret }}
    - name: RAGD_API_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .ctx.Values.apiKeys.existingSecret }}
          key: {{ default .ctx.Values.apiKeys.secretKey .ctx.Values.apiKeys.clientSecretKey }}
    {{- end }}
  securityContext:
    {{- toYaml .ctx.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .ctx.Values.rebuild.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}
