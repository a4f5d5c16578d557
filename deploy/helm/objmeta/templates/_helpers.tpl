{{/* Names, labels and the checks every template relies on. */}}

{{- define "objmeta.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name. Pods are named <fullname>-<ordinal>, and <namespace>-<pod name> is
the Kafka group.instance.id, so it stays short enough for a DNS label with a large ordinal.
*/}}
{{- define "objmeta.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "objmeta.selectorLabels" -}}
app.kubernetes.io/name: {{ include "objmeta.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "objmeta.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "objmeta.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
{{- end -}}

{{- define "objmeta.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "objmeta.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "objmeta.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The prefix every runbook_url of files/alerts.yml starts with; the PrometheusRule replaces it
with prometheusRule.runbookBaseUrl (whose default is the same, so the default rendering is the
file unchanged).
*/}}
{{- define "objmeta.runbookSourceBase" -}}
https://github.com/objmeta/objmeta/blob/main/docs/alerts.md
{{- end -}}

{{- define "objmeta.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "objmeta.tlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/*
The directory kafka.tls.caSecret is mounted at, and the file in it that ssl.ca.location names:
always ca.crt, whatever kafka.tls.caKey is (the volume maps that key to this file name).
*/}}
{{- define "objmeta.kafkaCaDir" -}}
/etc/objmeta/kafka-ca
{{- end -}}

{{- define "objmeta.s3CaDir" -}}
/etc/objmeta/s3-ca
{{- end -}}

{{- define "objmeta.kafkaCaFile" -}}
{{- printf "%s/ca.crt" (include "objmeta.kafkaCaDir" .) -}}
{{- end -}}

{{/*
KEDA needs a TriggerAuthentication for SASL credentials, a private CA, or both.
*/}}
{{- define "objmeta.triggerAuthEnabled" -}}
{{- if or (include "objmeta.saslEnabled" .) .Values.kafka.tls.caSecret -}}true{{- end -}}
{{- end -}}

{{/*
KAFKA_PROPERTIES: the security settings from kafka.securityProtocol, kafka.sasl and
kafka.tls, then kafka.properties in key order, joined with ";" (objmeta's separator for this
variable).
*/}}
{{- define "objmeta.kafkaProperties" -}}
{{- $props := list (printf "security.protocol=%s" .Values.kafka.securityProtocol) -}}
{{- if include "objmeta.saslEnabled" . -}}
{{- $props = append $props (printf "sasl.mechanism=%s" .Values.kafka.sasl.mechanism) -}}
{{- end -}}
{{- if .Values.kafka.tls.caSecret -}}
{{- $props = append $props (printf "ssl.ca.location=%s" (include "objmeta.kafkaCaFile" .)) -}}
{{- end -}}
{{- range $key := keys .Values.kafka.properties | sortAlpha -}}
{{- $props = append $props (printf "%s=%s" $key (get $.Values.kafka.properties $key)) -}}
{{- end -}}
{{- join ";" $props -}}
{{- end -}}

{{/*
Cross-field rules values.schema.json cannot express. Included by the StatefulSet, so that
every render (install, upgrade, template) checks them.
*/}}
{{- define "objmeta.validate" -}}
{{- if not .Values.kafka.brokers -}}
{{- fail "kafka.brokers is required (host:port[,host:port...])" -}}
{{- end -}}
{{- if not .Values.database.existingSecret -}}
{{- fail "database.existingSecret is required: the name of a Secret holding DATABASE_URL (key database.urlKey); the chart never takes the URL inline" -}}
{{- end -}}
{{- if and (include "objmeta.saslEnabled" .) (not .Values.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.sasl.existingSecret is required with kafka.securityProtocol %s: the name of a Secret holding the SASL username and password" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.kafka.sasl.existingSecret (not (include "objmeta.saslEnabled" .)) -}}
{{- fail (printf "kafka.sasl.existingSecret is set but kafka.securityProtocol is %s: use SASL_SSL or SASL_PLAINTEXT" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.kafka.tls.caSecret (not (include "objmeta.tlsEnabled" .)) -}}
{{- fail (printf "kafka.tls.caSecret is set but kafka.securityProtocol is %s: a broker CA is only used over TLS; use SSL or SASL_SSL" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if le (int .Values.database.poolSize) (int .Values.config.writeConcurrency) -}}
{{- fail (printf "database.poolSize (%d) must exceed config.writeConcurrency (%d): one connection per write lane plus one for health checks" (int .Values.database.poolSize) (int .Values.config.writeConcurrency)) -}}
{{- end -}}
{{- /* objmeta's longest shutdown: SHUTDOWN_TIMEOUT of writing, then up to CLOSE_TIMEOUT
       (15 s, src/pipeline.rs) to commit and close the consumer, then up to EXIT_GRACE (5 s,
       src/main.rs) for the runtime to stop. The one place this margin is enforced. */}}
{{- $shutdown := int .Values.config.shutdownTimeoutSeconds -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- if lt $grace (add $shutdown 20) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.shutdownTimeoutSeconds (%d) + 20: objmeta writes for up to the shutdown timeout, then commits and closes its consumer (up to 15 s) and exits (up to 5 s); a shorter grace period kills it before its final commit" $grace $shutdown) -}}
{{- end -}}
{{- if and .Values.kafka.partitions (not .Values.autoscaling.enabled) (gt (int .Values.replicaCount) (int .Values.kafka.partitions)) -}}
{{- fail (printf "replicaCount (%d) exceeds kafka.partitions (%d): a replica beyond the partition count gets no partition" (int .Values.replicaCount) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- if and .Values.reconcile.every (not .Values.reconcile.buckets) -}}
{{- fail "reconcile.buckets is required with reconcile.every: the buckets to reconcile" -}}
{{- end -}}
{{- if and .Values.reconcile.buckets (not .Values.reconcile.every) -}}
{{- fail "reconcile.buckets is set but reconcile.every is empty: set how often to reconcile them (e.g. 6h)" -}}
{{- end -}}
{{- if and .Values.reconcile.every (not (and .Values.s3.endpoint .Values.s3.existingSecret)) -}}
{{- fail "s3.endpoint and s3.existingSecret (a Secret holding the S3 access and secret keys) are required with reconcile.every" -}}
{{- end -}}
{{- if and .Values.s3.endpoint (not .Values.s3.existingSecret) -}}
{{- fail "s3.existingSecret (a Secret holding the S3 access and secret keys) is required with s3.endpoint" -}}
{{- end -}}
{{- if and (eq .Values.events.enrich "always") (not .Values.s3.endpoint) -}}
{{- fail "events.enrich always reads every changed object with HeadObject: set s3.endpoint and s3.existingSecret" -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if not .Values.kafka.partitions -}}
{{- fail "kafka.partitions (the topic's partition count) is required with autoscaling.enabled: maxReplicas is capped at it" -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): a replica beyond the partition count gets no partition" (int .Values.autoscaling.maxReplicas) (int .Values.kafka.partitions)) -}}
{{- end -}}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) -}}
{{- fail (printf "autoscaling.minReplicas (%d) exceeds autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
