{{/* Names, labels and the pieces every Flotilla pod shares. */}}

{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-flotilla", cut so that "-worker-<pool>-<hash>-<id>" still fits a DNS label. */}}
{{- define "flotilla.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "flotilla.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "flotilla.selectorLabels" (list $ "gateway") */}}
{{- define "flotilla.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "flotilla.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* "<repository>-<service>@<digest>" when image.digests names the service, else ":<tag>". */}}
{{- define "flotilla.image" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- $digest := get (default dict $root.Values.image.digests) $service -}}
{{- if $digest -}}
{{- printf "%s-%s@%s" $root.Values.image.repository $service $digest -}}
{{- else -}}
{{- printf "%s-%s:%s" $root.Values.image.repository $service (default $root.Chart.AppVersion $root.Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security: non-root, the runtime's default seccomp profile. */}}
{{- define "flotilla.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root filesystem (state lives on mounted volumes), no
capabilities, no privilege escalation. */}}
{{- define "flotilla.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Flags every service takes (services/common/server.cc). */}}
{{- define "flotilla.commonArgs" -}}
- --grpc_listen=0.0.0.0:{{ .Values.ports.grpc }}
- --http_listen=0.0.0.0:{{ .Values.ports.http }}
- --data_dir=/var/lib/flotilla
- --drain_seconds={{ .Values.drainSeconds }}
- --log_level={{ .Values.logLevel }}
{{- end -}}

{{/* The mesh's own read token, when auth.existingSecret carries one. */}}
{{- define "flotilla.tokenEnv" -}}
{{- if .Values.auth.existingSecret }}
- name: FLOTILLA_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: read-token
      optional: true
{{- end }}
{{- end -}}

{{- define "flotilla.containerPorts" -}}
- name: grpc
  containerPort: {{ .Values.ports.grpc }}
  protocol: TCP
- name: http
  containerPort: {{ .Values.ports.http }}
  protocol: TCP
{{- end -}}

{{/* Readiness on /readyz (503 from the moment a drain starts), liveness on /healthz. */}}
{{- define "flotilla.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{/* Drain: keep serving while endpoints drop the pod, then SIGTERM starts the service's own drain. */}}
{{- define "flotilla.lifecycle" -}}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.preStopSleepSeconds }}
{{- end -}}

{{- define "flotilla.terminationGracePeriodSeconds" -}}
{{- add .Values.preStopSleepSeconds .Values.drainSeconds 15 -}}
{{- end -}}

{{- define "flotilla.podAnnotations" -}}
{{- if .Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.http | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{- define "flotilla.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling constraints of one component's values: include "flotilla.scheduling" .Values.gateway */}}
{{- define "flotilla.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Addresses inside the release. */}}
{{- define "flotilla.registryAddress" -}}
{{- printf "%s-registry:%v" (include "flotilla.fullname" .) .Values.ports.grpc -}}
{{- end -}}

{{/* Bytes from an integer or a Kubernetes binary quantity ("512Mi", "32Gi"). */}}
{{- define "flotilla.bytes" -}}
{{- $value := toString . -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- $suffix := "" -}}
{{- range $unit, $_ := $units -}}
{{- if hasSuffix $unit $value -}}{{- $suffix = $unit -}}{{- end -}}
{{- end -}}
{{- if $suffix -}}
{{- mul (int64 (trimSuffix $suffix $value)) (get $units $suffix) -}}
{{- else -}}
{{- int64 $value -}}
{{- end -}}
{{- end -}}

{{/* Every gateway pod's registration address, up to gateway.autoscaling.maxReplicas (the bound for
manual scaling too, so that scaling gateways never changes, and so never restarts, the workers):
"<fullname>-gateway-<i>.<fullname>-gateway-workers:<grpc port>", comma-separated. Workers retry the
names of pods that do not exist (yet) every 2 s, so a gateway added later gets every worker. */}}
{{- define "flotilla.gatewayAddresses" -}}
{{- $fullname := include "flotilla.fullname" . -}}
{{- $gateway := .Values.gateway -}}
{{- $count := int $gateway.autoscaling.maxReplicas -}}
{{- $addresses := list -}}
{{- range $index := until $count -}}
{{- $addresses = append $addresses (printf "%s-gateway-%d.%s-gateway-workers:%v" $fullname $index $fullname $.Values.ports.grpc) -}}
{{- end -}}
{{- join "," $addresses -}}
{{- end -}}
