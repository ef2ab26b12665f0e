{{/*
Relabelings shared by the PodMonitor and the ServiceMonitor.

The agent's own static checkpoint carries the same labels as its DaemonSet pod, so its mirror
pod is selected too. Both share the node's network and port, so a scrape of either reaches
whichever copy holds the admin port: the mirror pod's target is dropped to avoid a duplicate of
every series. A `node` label names the node the agent runs on. `job` is always
"pod-checkpointer", whatever the release or monitor is called: the alerts on `up` (agent down or
absent) select it.
*/}}
{{- define "pod-checkpointer.monitoring.relabelings" -}}
- sourceLabels: [__meta_kubernetes_pod_annotationpresent_kubernetes_io_config_mirror]
  regex: "true"
  action: drop
- sourceLabels: [__meta_kubernetes_pod_node_name]
  targetLabel: node
  action: replace
- targetLabel: job
  replacement: pod-checkpointer
  action: replace
{{- end }}
