//! Builders for the pods and decision worlds that tests and benchmarks need, shared so that every
//! test speaks of parents the same way instead of hand-writing its own `pod()` and `Inputs`.
//! Compiled only for tests and under the `fixtures` feature: production code never builds pods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::decide::{self, Action, ApiParent, Decision, Inputs, OnDiskState, Yield};
use crate::model::{CHECKPOINT_ANNOTATION, KeyData, Observation, PodKey};

/// The node the decision fixtures run on, so tests can name the static copy `<name>-node-a`.
pub const NODE: &str = "node-a";

/// A pod from literal JSON, for the shapes no builder method covers (hostile or broken pods).
pub fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("test pod must deserialize")
}

/// A ConfigMap's keys as the shell hands them to `sanitize`: `data` (text) and `binaryData`.
pub fn config_map(data: &[(&str, &str)], binary_data: &[(&str, &[u8])]) -> KeyData {
    let mut keys = KeyData::new();
    for (key, value) in data {
        keys.insert(*key, value.as_bytes());
    }
    for (key, value) in binary_data {
        keys.insert_binary(*key, *value);
    }
    keys
}

/// A key in `kube-system`, where most of the decision tests' parents live.
pub fn key(name: &str) -> PodKey {
    PodKey::new("kube-system", name)
}

/// A fixed instant plus `secs`, so deadlines in tests read as small offsets.
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).expect("valid test time")
}

/// Builds a pod as the API would list it, one field at a time, so a test states only what it is
/// about. The pod is kept as JSON until [`PodBuilder::build`], which is how the API delivers it.
#[derive(Clone, Debug)]
pub struct PodBuilder {
    value: Value,
}

impl PodBuilder {
    /// A pod that did not opt in: the base for "is this a parent?" and status tests.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            value: json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
            }),
        }
    }

    /// A pod that opted in to checkpointing (the annotation set to `"true"`).
    pub fn parent(namespace: &str, name: &str) -> Self {
        Self::new(namespace, name).annotation(CHECKPOINT_ANNOTATION, "true")
    }

    /// Sets `metadata.uid`, which recreations change.
    pub fn uid(mut self, uid: &str) -> Self {
        self.value["metadata"]["uid"] = json!(uid);
        self
    }

    /// Adds one annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.value["metadata"]["annotations"][key] = json!(value);
        self
    }

    /// Adds one label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.value["metadata"]["labels"][key] = json!(value);
        self
    }

    /// Adds an owner reference; `controller` marks the owner that replaces the pod.
    pub fn owner(mut self, kind: &str, name: &str, uid: &str, controller: bool) -> Self {
        let reference = json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
            "controller": controller});
        push(&mut self.value["metadata"]["ownerReferences"], reference);
        self
    }

    /// Sets `metadata.deletionTimestamp` (RFC 3339): the pod is going away on purpose.
    pub fn deleting(mut self, at: &str) -> Self {
        self.value["metadata"]["deletionTimestamp"] = json!(at);
        self
    }

    /// Replaces the whole spec.
    pub fn spec(mut self, spec: Value) -> Self {
        self.value["spec"] = spec;
        self
    }

    /// Binds the pod to a node (`spec.nodeName`).
    pub fn node(mut self, node: &str) -> Self {
        self.value["spec"]["nodeName"] = json!(node);
        self
    }

    /// Sets `spec.volumes`, with one container `app` if the spec has none yet.
    pub fn volumes(mut self, volumes: Value) -> Self {
        self.container();
        self.value["spec"]["volumes"] = volumes;
        self
    }

    /// Sets `env` and `envFrom` of the first container (`app` if the spec has none yet).
    pub fn env(mut self, env: Value, env_from: Value) -> Self {
        let container = self.container();
        container["env"] = env;
        container["envFrom"] = env_from;
        self
    }

    /// Replaces the whole status (phase, container statuses...).
    pub fn status(mut self, status: Value) -> Self {
        self.value["status"] = status;
        self
    }

    /// The pod, as the API's JSON deserializes.
    pub fn build(self) -> Pod {
        pod(self.value)
    }

    /// The first container, created as `app` (image `app:1`) when there is none.
    fn container(&mut self) -> &mut Value {
        let containers = &mut self.value["spec"]["containers"];
        if containers.as_array().is_none_or(Vec::is_empty) {
            *containers = json!([{"name": "app", "image": "app:1"}]);
        }
        &mut containers[0]
    }
}

/// Appends to a JSON array, creating it when absent.
fn push(list: &mut Value, item: Value) {
    match list.as_array_mut() {
        Some(items) => items.push(item),
        None => *list = json!([item]),
    }
}

/// Everything [`decide::decide`] looks at, owned, and built up in a test's own words. Fields are
/// public so property tests can generate them directly.
#[derive(Clone, Debug)]
pub struct World {
    /// [`Inputs::now`].
    pub now: Timestamp,
    /// [`Inputs::grace`].
    pub grace: Duration,
    /// [`Inputs::node_name`].
    pub node_name: String,
    /// [`Inputs::me`].
    pub me: Option<PodKey>,
    /// [`Inputs::api`].
    pub api: Observation<BTreeMap<PodKey, ApiParent>>,
    /// [`Inputs::kubelet`].
    pub kubelet: Observation<BTreeMap<PodKey, ApiParent>>,
    /// [`Inputs::remembered`].
    pub remembered: BTreeMap<PodKey, ApiParent>,
    /// [`Inputs::yields`].
    pub yields: BTreeMap<PodKey, Yield>,
    /// [`Inputs::fallback_timeout`].
    pub fallback_timeout: Duration,
    /// [`Inputs::running`].
    pub running: Observation<BTreeSet<PodKey>>,
    /// [`Inputs::api_settled`].
    pub api_settled: bool,
    /// [`Inputs::desired`].
    pub desired: BTreeMap<PodKey, u64>,
    /// [`Inputs::written`].
    pub written: BTreeMap<PodKey, u64>,
    /// [`Inputs::disk`].
    pub disk: BTreeMap<PodKey, OnDiskState>,
    /// [`Inputs::api_since`].
    pub api_since: Option<Timestamp>,
    /// [`Inputs::deadlines`].
    pub deadlines: BTreeMap<PodKey, Timestamp>,
    /// [`Inputs::uninstalling`].
    pub uninstalling: bool,
    /// [`Inputs::replaced`].
    pub replaced: bool,
    /// [`Inputs::keep_active`].
    pub keep_active: bool,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    /// At [`t`]`(0)` on [`NODE`] with a 60 s grace: API unknown, runtime answering "nothing runs",
    /// nothing on disk.
    pub fn new() -> Self {
        Self {
            now: t(0),
            grace: Duration::from_secs(60),
            node_name: NODE.to_owned(),
            me: None,
            api: Observation::Unknown,
            kubelet: Observation::Unknown,
            remembered: BTreeMap::new(),
            yields: BTreeMap::new(),
            fallback_timeout: Duration::from_secs(300),
            running: Observation::Known(BTreeSet::new()),
            api_settled: true,
            desired: BTreeMap::new(),
            written: BTreeMap::new(),
            disk: BTreeMap::new(),
            api_since: None,
            deadlines: BTreeMap::new(),
            uninstalling: false,
            replaced: false,
            keep_active: true,
        }
    }

    /// The API answers and lists nothing yet.
    pub fn api_up(mut self) -> Self {
        self.api = Observation::Known(BTreeMap::new());
        self
    }

    /// The API lists the parent on this node.
    pub fn listed(mut self, k: &PodKey, started_here: bool) -> Self {
        let mut listed = self.api.known().cloned().unwrap_or_default();
        listed.insert(
            k.clone(),
            ApiParent {
                started_here,
                ..ApiParent::default()
            },
        );
        self.api = Observation::Known(listed);
        self
    }

    /// The runtime runs this pod (a parent, or a static copy by its `<name>-<node>` key).
    pub fn running(mut self, k: &PodKey) -> Self {
        let mut running = self.running.known().cloned().unwrap_or_default();
        running.insert(k.clone());
        self.running = Observation::Known(running);
        self
    }

    /// The runtime did not answer.
    pub fn runtime_unknown(mut self) -> Self {
        self.running = Observation::Unknown;
        self
    }

    /// Just after a start: the pod watch has neither synced nor failed yet, so the API view is
    /// unknown only for want of asking.
    pub fn api_unsettled(mut self) -> Self {
        self.api = Observation::Unknown;
        self.api_settled = false;
        self
    }

    /// A steady inactive checkpoint: on disk, and what the parent sanitizes to was written.
    pub fn inactive(mut self, k: &PodKey) -> Self {
        self.disk.entry(k.clone()).or_default().inactive = true;
        self.written.insert(k.clone(), 1);
        self.desired.insert(k.clone(), 1);
        self
    }

    /// The checkpoint's active file is in the static pod directory.
    pub fn active(mut self, k: &PodKey) -> Self {
        self.disk.entry(k.clone()).or_default().active = true;
        self
    }

    /// On disk, but no parent sanitizes to it now (API down after a reboot, say).
    pub fn only_on_disk(mut self, k: &PodKey) -> Self {
        self.disk.entry(k.clone()).or_default().inactive = true;
        self.desired.remove(k);
        self.written.remove(k);
        self
    }

    /// Exactly these checkpoint files on disk.
    pub fn on_disk(mut self, k: &PodKey, state: OnDiskState) -> Self {
        self.disk.insert(k.clone(), state);
        self
    }

    /// The parent sanitizes to a checkpoint with this digest now.
    pub fn desired(mut self, k: &PodKey, digest: u64) -> Self {
        self.desired.insert(k.clone(), digest);
        self
    }

    /// This process last wrote a checkpoint with this digest.
    pub fn written(mut self, k: &PodKey, digest: u64) -> Self {
        self.written.insert(k.clone(), digest);
        self
    }

    /// A persisted removal deadline.
    pub fn deadline(mut self, k: &PodKey, at: Timestamp) -> Self {
        self.deadlines.insert(k.clone(), at);
        self
    }

    /// The agent's own parent.
    pub fn me(mut self, k: &PodKey) -> Self {
        self.me = Some(k.clone());
        self
    }

    /// The time of the decision.
    pub fn at(mut self, now: Timestamp) -> Self {
        self.now = now;
        self
    }

    /// Another node, for worlds whose keys name it.
    pub fn node(mut self, node: &str) -> Self {
        self.node_name = node.to_owned();
        self
    }

    /// Another grace period.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The borrowed view `decide` takes.
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            now: self.now,
            grace: self.grace,
            node_name: &self.node_name,
            me: self.me.as_ref(),
            api: &self.api,
            kubelet: &self.kubelet,
            remembered: &self.remembered,
            yields: &self.yields,
            fallback_timeout: self.fallback_timeout,
            running: &self.running,
            api_settled: self.api_settled,
            desired: &self.desired,
            written: &self.written,
            disk: &self.disk,
            api_since: self.api_since,
            deadlines: &self.deadlines,
            uninstalling: self.uninstalling,
            keep_active: self.keep_active,
            replaced: self.replaced,
        }
    }

    /// What `decide` makes of this world.
    pub fn decide(&self) -> Decision {
        decide::decide(&self.inputs())
    }

    /// Only the actions.
    pub fn actions(&self) -> Vec<Action> {
        self.decide().actions
    }
}
