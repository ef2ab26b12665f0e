{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "pod-checkpointer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: "<release>-<chart>", or the release name when it already
contains the chart name. Truncated to 63 characters (the DNS label limit).
*/}}
{{- define "pod-checkpointer.fullname" -}}
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

{{/*
Chart label value: "<name>-<version>".
*/}}
{{- define "pod-checkpointer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the agent's pods. Never change them in an upgrade: a DaemonSet's selector
is immutable.
*/}}
{{- define "pod-checkpointer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pod-checkpointer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "pod-checkpointer.labels" -}}
helm.sh/chart: {{ include "pod-checkpointer.chart" . }}
{{ include "pod-checkpointer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: node-agent
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the service account the agent runs as.
*/}}
{{- define "pod-checkpointer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pod-checkpointer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing service account when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository:tag (tag defaults to appVersion), plus @digest when set.
*/}}
{{- define "pod-checkpointer.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- if .Values.image.digest }}
{{- $ref = printf "%s@%s" $ref .Values.image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
Namespaces the agent works in when allNamespaces is false: .Values.namespaces plus the release
namespace (the agent checkpoints its own pod), without duplicates, sorted so the rendered
output is stable. Rendered as a JSON list; read it back with fromJsonArray.
*/}}
{{- define "pod-checkpointer.namespaces" -}}
{{- append .Values.namespaces .Release.Namespace | uniq | sortAlpha | toJson }}
{{- end }}

{{/*
The API rules the agent uses inside every namespace it watches (one source of truth for the
namespaced Roles and for the ClusterRole of allNamespaces). Each rule is there because the
agent uses it.
*/}}
{{- define "pod-checkpointer.rules" -}}
# Parents: one watch on pods bound to this node (field selector spec.nodeName), a reflector
# that lists then watches; get for single re-reads.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Data referenced by parents (volumes, env, envFrom), checkpointed to the node: one watch per
# referenced object (field selector metadata.name), which needs list and watch; get for reads.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["get", "list", "watch"]
# Events on parent pods for activate/deactivate/remove (events.k8s.io/v1; repeats are patched).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Service accounts the agent may request tokens for (projected serviceAccountToken volumes of
parents, and its own): rbac.tokenServiceAccounts plus the agent's own account when it checkpoints
itself, as JSON {"<namespace>": ["<name>", ...]} (names sorted, no duplicates). Read it back with
fromJson. In namespaced mode an account in a namespace the agent does not watch fails the render:
the agent never asks for it.
*/}}
{{- define "pod-checkpointer.tokenAccounts" -}}
{{- $entries := .Values.rbac.tokenServiceAccounts | default list -}}
{{- if .Values.checkpointSelf -}}
{{- $entries = append $entries (printf "%s/%s" .Release.Namespace (include "pod-checkpointer.serviceAccountName" .)) -}}
{{- end -}}
{{- $watched := include "pod-checkpointer.namespaces" . | fromJsonArray -}}
{{- $byNamespace := dict -}}
{{- range $entries -}}
{{- $parts := splitList "/" . -}}
{{- $ns := index $parts 0 -}}
{{- if and (not $.Values.allNamespaces) (not (has $ns $watched)) -}}
{{- fail (printf "rbac.tokenServiceAccounts: %s is in namespace %s, which is not watched (add it to namespaces, or set allNamespaces)" . $ns) -}}
{{- end -}}
{{- $_ := set $byNamespace $ns (append (get $byNamespace $ns | default list) (index $parts 1) | uniq | sortAlpha) -}}
{{- end -}}
{{- $byNamespace | toJson -}}
{{- end }}

{{- define "pod-checkpointer.selfRules" -}}
# Its own DaemonSet, in the release namespace only: a watch (field selector metadata.name) that
# tells the agent it is being uninstalled, so it cleans the node before its credentials go.
- apiGroups: ["apps"]
  resources: ["daemonsets"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
Refuses a duration value the agent would refuse: zero, or longer than its maximum. Takes a dict:
name (the value's key), value ("1m30s"; the schema has checked its form), maxMs and max (the
limit in milliseconds and as written). Renders nothing.
*/}}
{{- define "pod-checkpointer.checkDuration" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- $ms := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" (toString .value) -1 -}}
{{- $n := regexFind "^[0-9]+" . | int64 -}}
{{- $ms = add $ms (mul $n (get $units (trimPrefix (regexFind "^[0-9]+" .) .))) -}}
{{- end -}}
{{- if eq (int64 $ms) 0 -}}
{{- fail (printf "%s (%s) must be more than zero: the agent refuses a zero duration" .name (toString .value)) -}}
{{- else if gt (int64 $ms) (int64 .maxMs) -}}
{{- fail (printf "%s (%s) must be at most %s: the agent refuses longer" .name (toString .value) .max) -}}
{{- end -}}
{{- end }}


{{/*
The pod's affinity: .Values.affinity, and with controlPlaneOnly every required node selector term
narrowed to nodes labelled node-role.kubernetes.io/control-plane (Exists: kubeadm sets the value
"", k3s and RKE2 "true"). Terms are ORed and the expressions of a term ANDed, so the expression
goes into each term; without a required term of the user's, it is the only term. Renders YAML, or
nothing when there is no affinity.
*/}}
{{- define "pod-checkpointer.affinity" -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) -}}
{{- if .Values.controlPlaneOnly -}}
{{- $controlPlane := dict "key" "node-role.kubernetes.io/control-plane" "operator" "Exists" -}}
{{- $nodeAffinity := get $affinity "nodeAffinity" | default dict -}}
{{- $required := get $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" | default dict -}}
{{- $terms := list -}}
{{- range (get $required "nodeSelectorTerms" | default list) -}}
{{- $terms = append $terms (set (deepCopy .) "matchExpressions" (append (get . "matchExpressions" | default list) $controlPlane)) -}}
{{- end -}}
{{- if not $terms -}}
{{- $terms = list (dict "matchExpressions" (list $controlPlane)) -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ = set $nodeAffinity "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ = set $affinity "nodeAffinity" $nodeAffinity -}}
{{- end -}}
{{- if $affinity -}}
{{- toYaml $affinity -}}
{{- end -}}
{{- end }}
