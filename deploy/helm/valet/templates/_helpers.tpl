{{/* Names and labels. */}}
{{- define "valet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "valet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "valet.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "valet.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- define "valet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "valet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "valet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "valet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
{{- define "valet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "valet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: preStop + drain + grace + margin. */}}
{{- define "valet.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown -}}
{{- $ms := add (int64 $s.drainDelayMs) (int64 $s.graceMs) -}}
{{- add (int64 $s.preStopSleepSeconds) (div (add $ms 999) 1000) (int64 $s.marginSeconds) -}}
{{- end -}}

{{/* The master key file when it comes from a Kubernetes Secret. */}}
{{- define "valet.masterKeyPath" -}}/run/valet/master-key/master.key{{- end -}}

{{/*
valet.toml from .Values.config, with the keys the chart owns set.
*/}}
{{- define "valet.config" -}}
{{- $cfg := deepCopy (default (dict) .Values.config) -}}
{{- $server := default (dict) (index $cfg "server") -}}
{{- $_ := set $server "listen" (printf "0.0.0.0:%d" (int .Values.ports.gateway)) -}}
{{- $_ := set $server "admin_listen" (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- $_ := set $server "ops_listen" (printf "0.0.0.0:%d" (int .Values.ports.ops)) -}}
{{- $_ := set $server "drain_delay_ms" (int64 .Values.shutdown.drainDelayMs) -}}
{{- $_ := set $server "shutdown_grace_ms" (int64 .Values.shutdown.graceMs) -}}
{{- $_ := set $cfg "server" $server -}}
{{- $_ := set $cfg "state" (dict "dir" "/var/lib/valet") -}}
{{- $secrets := default (dict) (index $cfg "secrets") -}}
{{- $src := .Values.masterKey.source -}}
{{- if eq $src "secret" -}}
{{- $_ := set $secrets "master_key" (dict "file" (include "valet.masterKeyPath" .)) -}}
{{- else if eq $src "aws" -}}
{{- $_ := set $secrets "master_key" (dict "aws_secret" .Values.masterKey.awsSecret) -}}
{{- else if ne $src "state" -}}
{{- fail (printf "masterKey.source: %q is not one of state, secret, aws" $src) -}}
{{- end -}}
{{- if $secrets -}}{{- $_ := set $cfg "secrets" $secrets -}}{{- end -}}
{{- $quota := default (dict) (index $cfg "quota") -}}
{{- if not (hasKey $quota "replicas") -}}
{{- $n := ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled -}}
{{- $_ := set $quota "replicas" (int64 $n) -}}
{{- end -}}
{{- $_ := set $cfg "quota" $quota -}}
{{- include "valet.toml.table" (dict "path" "" "table" $cfg) -}}
{{- end -}}

{{/* TOML rendering (Helm's toToml writes YAML's numbers as floats). */}}
{{- define "valet.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}
{{- define "valet.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}
{{- $all := true -}}
{{- range . -}}{{- if not (kindIs "map" .) -}}{{- $all = false -}}{{- end -}}{{- end -}}
{{- if $all -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- define "valet.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if kindIs "float64" $v -}}
{{- if eq (float64 (int64 $v)) $v -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}[{{- range $i, $e := $v -}}{{- if $i -}}, {{ end -}}{{- include "valet.toml.value" $e -}}{{- end -}}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha -}}{{- if $i -}}, {{ end -}}{{- include "valet.toml.key" $k }} = {{ include "valet.toml.value" (index $v $k) -}}{{- end -}} }
{{- else -}}{{- fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}
{{- define "valet.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "valet.toml.isTableArray" $v)) }}
{{ include "valet.toml.key" $k }} = {{ include "valet.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k := keys $t | sortAlpha -}}
{{- $v := index $t $k -}}
{{- $p := ternary (include "valet.toml.key" $k) (printf "%s.%s" $path (include "valet.toml.key" $k)) (eq $path "") -}}
{{- if kindIs "map" $v }}

[{{ $p }}]
{{- include "valet.toml.table" (dict "path" $p "table" $v) -}}
{{- else if include "valet.toml.isTableArray" $v -}}
{{- range $e := $v }}

[[{{ $p }}]]
{{- include "valet.toml.table" (dict "path" $p "table" $e) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
