{{/* The name every object of the release carries: the release name (or fullnameOverride). */}}
{{- define "meridian.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "meridian.selectorLabels" -}}
app.kubernetes.io/name: meridian
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "meridian.labels" -}}
{{ include "meridian.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/component: region
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
meridian.io/region: {{ .Values.region | quote }}
{{- end -}}

{{- define "meridian.postgres" -}}
{{- if eq .Values.store.kind "postgres" }}true{{ end -}}
{{- end -}}

{{/* Where the node reads the cluster file: the ConfigMap's copy, or the copy with the session secret added. */}}
{{- define "meridian.configPath" -}}
{{- if .Values.sessionSecret.name -}}/etc/meridian/cluster/cluster.yaml{{- else -}}/etc/meridian/config/cluster.yaml{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express, with messages that say what to set. */}}
{{- define "meridian.validate" -}}
{{- $names := list .Values.region -}}
{{- range .Values.peers -}}
{{- if has .name $names -}}
{{- fail (printf "peers: region '%s' is listed twice (or is this release's own region); list each other region once" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- if and (include "meridian.postgres" .) (has (int .Values.ports.health) (list (int .Values.ports.client) (int .Values.ports.peer))) -}}
{{- fail (printf "ports.health (%d) is also the client or peer port: every node binds all three; choose another" (int .Values.ports.health)) -}}
{{- end -}}
{{- if and .Values.cluster.auth (not .Values.sessionSecret.name) -}}
{{- fail "cluster.auth is set: set sessionSecret.name (and sessionSecret.key) to an existing Secret holding the cluster's session_secret, which the node requires with auth" -}}
{{- end -}}
{{- if not .Values.insecure -}}
{{- $missing := list -}}
{{- if not .Values.cluster.auth -}}{{- $missing = append $missing "cluster.auth (`meridian token keygen` prints a key entry)" -}}{{- end -}}
{{- if not .Values.sessionSecret.name -}}{{- $missing = append $missing "sessionSecret.name" -}}{{- end -}}
{{- if not .Values.tls.secretName -}}{{- $missing = append $missing "tls.secretName (`meridian certs init`, then `meridian certs issue`)" -}}{{- end -}}
{{- if ne .Values.tls.clientAPI "https" -}}{{- $missing = append $missing "tls.clientAPI: https" -}}{{- end -}}
{{- if $missing -}}
{{- fail (printf "protected mode: region %s listens on addresses other machines reach, so the node refuses to start without %s. Set them (docs/security.md), or set insecure: true to serve anyone who can reach it" .Values.region (join ", " $missing)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The node's probe handler: GET /health (alive) or /ready (it serves the region and its store answers a read).
     PostgreSQL mode asks /health on the health port (list . "/health" "health"), which speaks plain HTTP and
     answers for the pod itself: on the client port a standby relays to the holder, so a standby's liveness would
     follow the holder's. On the client port, a TCP connect where the client API demands client certificates (the
     kubelet presents none). */}}
{{- define "meridian.probeHandler" -}}
{{- $root := index . 0 -}}{{- $path := index . 1 -}}{{- $port := index . 2 -}}
{{- with $root -}}
{{- if eq $port "health" -}}
httpGet:
  path: {{ $path }}
  port: health
  scheme: HTTP
{{- else if and .Values.tls.secretName (eq .Values.tls.clientCertificates "required") -}}
tcpSocket:
  port: client
{{- else -}}
httpGet:
  path: {{ $path }}
  port: client
  scheme: {{ if and .Values.tls.secretName (eq .Values.tls.clientAPI "https") }}HTTPS{{ else }}HTTP{{ end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod template shared by the StatefulSet (SQLite) and the Deployment (PostgreSQL). */}}
{{- define "meridian.podTemplate" -}}
metadata:
  labels:
    {{- include "meridian.labels" . | nindent 4 }}
  annotations:
    checksum/cluster-file: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ .Values.securityContext.runAsUser }}
    runAsGroup: {{ .Values.securityContext.runAsGroup }}
    fsGroup: {{ .Values.securityContext.fsGroup }}
    # The root key file on the volume must stay 0600: skip the recursive group change once the volume is owned.
    fsGroupChangePolicy: OnRootMismatch
    seccompProfile:
      type: RuntimeDefault
  {{- if include "meridian.postgres" . }}
  topologySpreadConstraints:
    - maxSkew: {{ .Values.topologySpread.maxSkew }}
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ .Values.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "meridian.selectorLabels" . | nindent 10 }}
      matchLabelKeys:
        - pod-template-hash
    - maxSkew: 1
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "meridian.selectorLabels" . | nindent 10 }}
      matchLabelKeys:
        - pod-template-hash
  {{- end }}
  {{- if .Values.sessionSecret.name }}
  initContainers:
    # The cluster file is the ConfigMap's, plus the session secret from its Secret: written to a memory volume
    # that only this pod sees, so the secret never sits in the ConfigMap.
    - name: cluster-file
      image: {{ printf "%s:%s" .Values.initImage.repository .Values.initImage.tag | quote }}
      imagePullPolicy: {{ .Values.initImage.pullPolicy }}
      command:
        - /bin/sh
        - -c
        - |
          set -eu
          secret=$(cat "$SESSION_SECRET_FILE")
          case "$secret" in
            ""|*[!A-Za-z0-9._~+/=-]*)
              echo "the session secret in $SESSION_SECRET_FILE is empty or holds characters other than A-Z a-z 0-9 . _ ~ + / = -" >&2
              exit 1 ;;
          esac
          umask 077
          { cat "$CLUSTER_FILE_SOURCE"; printf '\nsession_secret: "%s"\n' "$secret"; } > "$CLUSTER_FILE.tmp"
          mv "$CLUSTER_FILE.tmp" "$CLUSTER_FILE"
      env:
        - name: CLUSTER_FILE_SOURCE
          value: /etc/meridian/config/cluster.yaml
        - name: SESSION_SECRET_FILE
          value: /etc/meridian/session-secret/session-secret
        - name: CLUSTER_FILE
          value: /etc/meridian/cluster/cluster.yaml
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      resources:
        requests:
          cpu: 10m
          memory: 16Mi
        limits:
          memory: 32Mi
      volumeMounts:
        - name: config
          mountPath: /etc/meridian/config
          readOnly: true
        - name: session-secret
          mountPath: /etc/meridian/session-secret
          readOnly: true
        - name: cluster-file
          mountPath: /etc/meridian/cluster
  {{- end }}
  containers:
    - name: meridian
      image: {{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      command: [meridian]
      args:
        - node
        - --config
        - {{ include "meridian.configPath" . }}
        - --region
        - {{ .Values.region | quote }}
        - --data
        - /var/lib/meridian
        # The other regions are reached at their addresses in the cluster file, not through `meridian wan`.
        - --peer-route
        - direct
        - --log-level
        - {{ .Values.logLevel }}
        {{- if .Values.insecure }}
        - --insecure
        {{- end }}
        {{- if include "meridian.postgres" . }}
        # Every node answers GET /health here, whether it holds the region's lease or stands by.
        - --health-listen
        - {{ printf "0.0.0.0:%d" (int .Values.ports.health) | quote }}
        # Where the other nodes reach this one while it holds the lease (written into the lease row; standbys
        # relay to it): the pod's IP. The cluster file's addresses are 0.0.0.0, and other pods cannot resolve its
        # host name.
        - --advertise
        - $(POD_IP)
        {{- end }}
      ports:
        - name: client
          containerPort: {{ .Values.ports.client }}
          protocol: TCP
        - name: peer
          containerPort: {{ .Values.ports.peer }}
          protocol: TCP
        {{- if include "meridian.postgres" . }}
        - name: health
          containerPort: {{ .Values.ports.health }}
          protocol: TCP
        {{- end }}
      {{- if or .Values.rootKeySecret.name (include "meridian.postgres" .) }}
      env:
        {{- if .Values.rootKeySecret.name }}
        - name: MERIDIAN_ROOT_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .Values.rootKeySecret.name | quote }}
              key: {{ .Values.rootKeySecret.key | quote }}
        {{- end }}
        {{- if include "meridian.postgres" . }}
        - name: POD_IP
          valueFrom:
            fieldRef:
              fieldPath: status.podIP
        - name: MERIDIAN_POSTGRES_PASSWORD
          valueFrom:
            secretKeyRef:
              name: {{ .Values.store.postgres.passwordSecret.name | quote }}
              key: {{ .Values.store.postgres.passwordSecret.key | quote }}
        {{- end }}
      {{- end }}
      {{- $healthPort := ternary "health" "client" (eq .Values.store.kind "postgres") }}
      # Startup and liveness: the node runs (holder or standby). Readiness: the region is served through this pod
      # and its store answers; with PostgreSQL a standby relays /ready to the lease holder, so every pod is Ready
      # while the holder is, and none while no node holds the lease (a takeover).
      startupProbe:
        {{- include "meridian.probeHandler" (list . "/health" $healthPort) | nindent 8 }}
        {{- toYaml .Values.probes.startup | nindent 8 }}
      readinessProbe:
        {{- include "meridian.probeHandler" (list . "/ready" "client") | nindent 8 }}
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      livenessProbe:
        {{- include "meridian.probeHandler" (list . "/health" $healthPort) | nindent 8 }}
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - name: data
          mountPath: /var/lib/meridian
        - name: tmp
          mountPath: /tmp
        {{- if .Values.sessionSecret.name }}
        - name: cluster-file
          mountPath: /etc/meridian/cluster
          readOnly: true
        {{- else }}
        - name: config
          mountPath: /etc/meridian/config
          readOnly: true
        {{- end }}
        {{- if .Values.tls.secretName }}
        - name: tls
          mountPath: /etc/meridian/tls
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "meridian.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if include "meridian.postgres" . }}
    # The region's data lives in PostgreSQL: a node's data directory is scratch space that goes with the pod.
    - name: data
      emptyDir: {}
    {{- end }}
    {{- if .Values.sessionSecret.name }}
    - name: session-secret
      secret:
        secretName: {{ .Values.sessionSecret.name | quote }}
        defaultMode: 0440
        items:
          - key: {{ .Values.sessionSecret.key | quote }}
            path: session-secret
    - name: cluster-file
      emptyDir:
        medium: Memory
        sizeLimit: 1Mi
    {{- end }}
    {{- if .Values.tls.secretName }}
    # Group-readable: the files belong to root and the pod's fsGroup, and the node runs in that group.
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName | quote }}
        defaultMode: 0440
    {{- end }}
{{- end -}}
