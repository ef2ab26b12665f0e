//! The API server side of the shell: a reflector on the pods bound to this node, per-object
//! watches on the Secrets and ConfigMaps those pods reference, TokenRequests for projected
//! service-account tokens, and Events on parents. Nothing here decides anything: it keeps
//! in-memory views current and pokes the reconciler when they change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::model::{KeyData, PodKey};
use crate::sanitize::TokenSpec;

/// Wakes the reconciler. `Notify` keeps one permit, so a burst of events becomes one reconcile.
pub type Trigger = Arc<Notify>;

/// A short, stable label for an API failure, used in metrics and logs. `forbidden` means the
/// agent lacks an RBAC rule.
pub fn error_reason(err: &kube::Error) -> &'static str {
    match err {
        kube::Error::Api(status) => match status.code {
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            410 => "expired",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "rejected",
        },
        _ => "unavailable",
    }
}

fn watcher_reason(err: &watcher::Error) -> &'static str {
    match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => error_reason(e),
        watcher::Error::WatchError(status) => match status.code {
            403 => "forbidden",
            410 => "expired",
            _ => "server_error",
        },
        _ => "unavailable",
    }
}

/// How the pod watches retry a lost API server: doubling from 500 ms up to 5 s, so the agent
/// sees the API back within seconds of an outage (kube's default waits up to 30 s), at the cost
/// of one LIST per namespace every 5 s while it is gone.
#[derive(Clone, Copy, Debug)]
pub struct ReconnectBackoff {
    next: Duration,
}

impl ReconnectBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (now * 2).min(Self::MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The reflector stores of the pods bound to this node, one per watched namespace (or one for
/// all namespaces), and whether each watch is connected and synced.
pub struct PodWatch {
    streams: Vec<(Store<Pod>, Arc<AtomicBool>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl PodWatch {
    /// Starts the watches. `namespaces` empty means one cluster-wide watch.
    pub fn spawn(
        client: &Client,
        node_name: &str,
        namespaces: &[String],
        trigger: Trigger,
        metrics: Metrics,
    ) -> Self {
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        let apis: Vec<(String, Api<Pod>)> = if namespaces.is_empty() {
            vec![("*".to_string(), Api::all(client.clone()))]
        } else {
            namespaces
                .iter()
                .map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns)))
                .collect()
        };
        let mut streams = Vec::new();
        let mut tasks = Vec::new();
        for (scope, api) in apis {
            let (reader, writer) = reflector::store();
            let up = Arc::new(AtomicBool::new(false));
            let events = kube::runtime::watcher(api, cfg.clone())
                .backoff(ReconnectBackoff::default())
                .reflect(writer);
            tasks.push(tokio::spawn(follow_pods(
                events,
                scope,
                up.clone(),
                trigger.clone(),
                metrics.clone(),
            )));
            streams.push((reader, up));
        }
        Self { streams, tasks }
    }

    /// Every pod bound here, or `None` while any watch is disconnected or not yet synced: a
    /// partial list must never look like "the parent is gone".
    pub fn pods(&self) -> Option<Vec<Arc<Pod>>> {
        if !self.is_reachable() {
            return None;
        }
        Some(self.streams.iter().flat_map(|(s, _)| s.state()).collect())
    }

    /// True when every watch is connected and has delivered its initial list.
    pub fn is_reachable(&self) -> bool {
        self.streams
            .iter()
            .all(|(_, up)| up.load(Ordering::Relaxed))
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn follow_pods(
    events: impl Stream<Item = watcher::Result<Event<Pod>>>,
    scope: String,
    up: Arc<AtomicBool>,
    trigger: Trigger,
    metrics: Metrics,
) {
    let mut events = std::pin::pin!(events);
    // Whether the last thing logged was a failure, so each transition is logged once.
    let mut down_logged = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init | Event::InitApply(_)) => continue,
            Ok(Event::InitDone | Event::Apply(_) | Event::Delete(_)) => {
                if !up.swap(true, Ordering::Relaxed) {
                    tracing::info!(scope = %scope, action = "api_reachable", "pod watch synced with the API server");
                }
                down_logged = false;
                metrics.synced("api");
            }
            Err(e) => {
                let reason = watcher_reason(&e);
                metrics
                    .api_errors
                    .with_label_values(&["pods", reason])
                    .inc();
                up.store(false, Ordering::Relaxed);
                if !down_logged {
                    down_logged = true;
                    if reason == "forbidden" {
                        tracing::error!(scope = %scope, action = "api_unreachable", reason, error = %e, "not allowed to watch pods; check the agent's RBAC for this namespace");
                    } else {
                        tracing::warn!(scope = %scope, action = "api_unreachable", reason, error = %e, "cannot reach the API server; retrying, and removing nothing until it is back");
                    }
                } else {
                    tracing::debug!(scope = %scope, reason, error = %e, "pod watch still failing");
                }
            }
        }
        trigger.notify_one();
    }
}

/// Which kind of object a parent references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Secret,
    ConfigMap,
}

impl ObjectKind {
    fn resource(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secrets",
            ObjectKind::ConfigMap => "configmaps",
        }
    }
}

/// A referenced Secret or ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

/// What the watch on one object has seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectState {
    /// No answer yet: sanitizing now would wrongly treat the object as missing.
    Pending,
    Found(KeyData),
    /// The API says it does not exist.
    Missing,
    /// The API refused (e.g. `forbidden`); the reason label says why.
    Failed(&'static str),
}

type ObjectMap = Arc<Mutex<BTreeMap<ObjectRef, ObjectState>>>;

/// One watch per referenced object (field selector `metadata.name`), started and stopped as
/// references change, so a changed Secret reaches the disk within moments and nothing is polled.
pub struct ObjectWatches {
    client: Client,
    trigger: Trigger,
    metrics: Metrics,
    state: ObjectMap,
    tasks: HashMap<ObjectRef, JoinHandle<()>>,
}

impl ObjectWatches {
    pub fn new(client: Client, trigger: Trigger, metrics: Metrics) -> Self {
        Self {
            client,
            trigger,
            metrics,
            state: Arc::default(),
            tasks: HashMap::new(),
        }
    }

    /// Watches exactly `wanted`: starts missing watches, stops the ones no parent needs.
    pub fn ensure(&mut self, wanted: &BTreeSet<ObjectRef>) {
        self.tasks.retain(|r, task| {
            let keep = wanted.contains(r);
            if !keep {
                task.abort();
            }
            keep
        });
        if let Ok(mut state) = self.state.lock() {
            state.retain(|r, _| wanted.contains(r));
        }
        for r in wanted {
            if self.tasks.contains_key(r) {
                continue;
            }
            if let Ok(mut state) = self.state.lock() {
                state.insert(r.clone(), ObjectState::Pending);
            }
            let task = match r.kind {
                ObjectKind::Secret => self.spawn::<Secret>(r.clone(), secret_data),
                ObjectKind::ConfigMap => self.spawn::<ConfigMap>(r.clone(), config_map_data),
            };
            self.tasks.insert(r.clone(), task);
        }
    }

    /// The current state of one object (`Pending` if unknown).
    pub fn get(&self, r: &ObjectRef) -> ObjectState {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.get(r).cloned())
            .unwrap_or(ObjectState::Pending)
    }

    fn spawn<K>(&self, r: ObjectRef, data: fn(&K) -> KeyData) -> JoinHandle<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &r.namespace);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", r.name));
        let state = self.state.clone();
        let trigger = self.trigger.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
            let mut seen: Option<KeyData> = None;
            while let Some(event) = events.next().await {
                let next = match event {
                    Ok(Event::Init) => {
                        seen = None;
                        continue;
                    }
                    Ok(Event::InitApply(obj)) => {
                        seen = Some(data(&obj));
                        continue;
                    }
                    Ok(Event::InitDone) => match seen.take() {
                        Some(d) => ObjectState::Found(d),
                        None => ObjectState::Missing,
                    },
                    Ok(Event::Apply(obj)) => ObjectState::Found(data(&obj)),
                    Ok(Event::Delete(_)) => ObjectState::Missing,
                    Err(e) => {
                        let reason = watcher_reason(&e);
                        metrics
                            .api_errors
                            .with_label_values(&[r.kind.resource(), reason])
                            .inc();
                        if reason == "forbidden" {
                            tracing::error!(namespace = %r.namespace, object = %r.name, resource = r.kind.resource(), reason, error = %e, "not allowed to watch a referenced object; check the agent's RBAC");
                        } else {
                            tracing::debug!(namespace = %r.namespace, object = %r.name, reason, error = %e, "object watch failing");
                        }
                        ObjectState::Failed(reason)
                    }
                };
                let changed = match state.lock() {
                    Ok(mut s) => match s.get_mut(&r) {
                        // A transient failure keeps the last good data.
                        Some(cur)
                            if matches!(next, ObjectState::Failed(_))
                                && matches!(cur, ObjectState::Found(_) | ObjectState::Missing) =>
                        {
                            false
                        }
                        Some(cur) if *cur != next => {
                            *cur = next;
                            true
                        }
                        _ => false,
                    },
                    Err(_) => false,
                };
                if changed {
                    tracing::debug!(namespace = %r.namespace, object = %r.name, resource = r.kind.resource(), "referenced object changed");
                    trigger.notify_one();
                }
            }
        })
    }
}

impl Drop for ObjectWatches {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn reconnect_backoff_doubles_to_a_cap_and_resets() {
        let mut b = ReconnectBackoff::default();
        let first: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, vec![500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(500)));
    }
}

fn secret_data(s: &Secret) -> KeyData {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn config_map_data(c: &ConfigMap) -> KeyData {
    let text = c
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()));
    let binary = c
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()));
    text.chain(binary).collect()
}

/// A token obtained for one parent and one projected source.
#[derive(Clone, Debug)]
struct CachedToken {
    token: String,
    refresh_at: jiff::Timestamp,
}

/// Service-account tokens for projected volumes, obtained through the TokenRequest API bound to
/// the parent pod and refreshed at 80% of their life while the API is up.
#[derive(Default)]
pub struct Tokens {
    cache: BTreeMap<(PodKey, TokenSpec), CachedToken>,
}

impl Tokens {
    /// Requests the tokens `pod` needs that are missing or due for refresh. Failures keep the
    /// old token (it is still valid for a while) and are reported.
    ///
    /// `bind` ties each token to the pod, so it dies with it. The agent's own checkpoint is not
    /// bound: its static copy must still reach the API server after the DaemonSet pod is gone,
    /// to learn that it was replaced or removed (the token still dies with the ServiceAccount).
    pub async fn refresh(
        &mut self,
        client: &Client,
        pod: &Pod,
        specs: &BTreeSet<TokenSpec>,
        bind: bool,
        metrics: &Metrics,
    ) {
        let key = PodKey::new(pod.namespace().unwrap_or_default(), pod.name_any());
        let now = jiff::Timestamp::now();
        let Some(sa) = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
        else {
            return;
        };
        for spec in specs {
            let ck = (key.clone(), spec.clone());
            if self.cache.get(&ck).is_some_and(|t| t.refresh_at > now) {
                continue;
            }
            match request_token(client, pod, &sa, spec, bind).await {
                Ok((token, lifetime)) => {
                    let refresh_at = now
                        .checked_add(lifetime.mul_f64(0.8))
                        .unwrap_or(jiff::Timestamp::MAX);
                    self.cache.insert(ck, CachedToken { token, refresh_at });
                    tracing::debug!(namespace = %key.namespace, pod = %key.name, "service-account token refreshed");
                }
                Err(e) => {
                    let reason = error_reason(&e);
                    metrics
                        .api_errors
                        .with_label_values(&["serviceaccounts/token", reason])
                        .inc();
                    tracing::warn!(namespace = %key.namespace, pod = %key.name, reason, error = %e, "could not obtain a service-account token for the checkpoint");
                }
            }
        }
    }

    /// The tokens currently held for one parent.
    pub fn for_pod(&self, key: &PodKey) -> BTreeMap<TokenSpec, String> {
        self.cache
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|((_, spec), t)| (spec.clone(), t.token.clone()))
            .collect()
    }

    /// Forgets tokens of parents that are gone.
    pub fn retain(&mut self, keep: &BTreeSet<PodKey>) {
        self.cache.retain(|(k, _), _| keep.contains(k));
    }

    /// The earliest time a token is due for refresh.
    pub fn next_refresh(&self) -> Option<jiff::Timestamp> {
        self.cache.values().map(|t| t.refresh_at).min()
    }
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    sa: &str,
    spec: &TokenSpec,
    bind: bool,
) -> Result<(String, Duration), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: spec.audience.as_ref().map(|a| vec![a.clone()]),
            expiration_seconds: Some(spec.expiration_seconds),
            bound_object_ref: bind.then(|| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await?;
    let status = resp.status.unwrap_or_default();
    let lifetime = status
        .expiration_timestamp
        .map(|t| t.0.duration_since(jiff::Timestamp::now()))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(600));
    Ok((status.token.unwrap_or_default(), lifetime))
}

/// Publishes Kubernetes Events on parent pods so `kubectl describe pod` shows what the agent did.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "pod-checkpointer".into(),
            instance: Some(node_name.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Fire and forget: an Event that cannot be sent must never hold up the agent.
    pub fn publish(&self, pod: &Pod, reason: &str, action: &str, note: String) {
        let reference: ObjectReference = pod.object_ref(&());
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish an Event");
            }
        });
    }
}

/// Watches the DaemonSet that owns the agent's own pod. Its deletion means the agent is being
/// uninstalled: the ServiceAccount and RBAC go with it, so this is the last moment the agent
/// knows it should clean the node. The watch is opened while the permissions still hold, and a
/// watch already open keeps delivering.
pub struct OwnerWatch {
    deleted: Arc<AtomicBool>,
    owner: Arc<std::sync::Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl OwnerWatch {
    /// Finds the owner of `pod_name` (retrying while the API is away) and watches it. A pod with
    /// no DaemonSet owner (the static copy's mirror pod, a pod run by hand) never reports deletion.
    /// The owner's name, once found, is offered through [`OwnerWatch::owner`] for the store to
    /// remember, so the static copy can recognise a newer pod of the same DaemonSet.
    pub fn spawn(client: Client, namespace: &str, pod_name: &str, trigger: Trigger) -> Self {
        let deleted = Arc::new(AtomicBool::new(false));
        let flag = deleted.clone();
        let found = Arc::new(std::sync::Mutex::new(None));
        let found_by_task = found.clone();
        let (namespace, pod_name) = (namespace.to_string(), pod_name.to_string());
        let task = tokio::spawn(async move {
            let Some(owner) = daemonset_owner(&client, &namespace, &pod_name).await else {
                return;
            };
            if let Ok(mut slot) = found_by_task.lock() {
                *slot = Some(owner.clone());
            }
            trigger.notify_one();
            let api: Api<k8s_openapi::api::apps::v1::DaemonSet> =
                Api::namespaced(client, &namespace);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={owner}"));
            let mut events = std::pin::pin!(kube::runtime::watcher(api, cfg).default_backoff());
            let mut seen = false;
            while let Some(event) = events.next().await {
                let gone = match event {
                    Ok(Event::Init) => {
                        seen = false;
                        false
                    }
                    Ok(Event::InitApply(ds) | Event::Apply(ds)) => {
                        seen = true;
                        ds.metadata.deletion_timestamp.is_some()
                    }
                    Ok(Event::InitDone) => !seen,
                    Ok(Event::Delete(_)) => true,
                    Err(e) => {
                        tracing::debug!(daemonset = %owner, error = %e, "owner watch failing");
                        false
                    }
                };
                if gone && !flag.swap(true, Ordering::Relaxed) {
                    tracing::info!(daemonset = %owner, action = "uninstall", "the agent's DaemonSet is being deleted: removing every checkpoint on this node, then its own");
                    trigger.notify_one();
                }
            }
        });
        Self {
            deleted,
            owner: found,
            task,
        }
    }

    /// The name of the DaemonSet that owns the agent's pod, once the API has said it.
    pub fn owner(&self) -> Option<String> {
        self.owner.lock().ok().and_then(|o| o.clone())
    }

    /// True once the owner DaemonSet is being deleted or is gone.
    pub fn deleted(&self) -> bool {
        self.deleted.load(Ordering::Relaxed)
    }
}

impl Drop for OwnerWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `pod` belongs to the DaemonSet named `owner`.
pub fn owned_by_daemonset(pod: &Pod, owner: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.name == owner)
}

/// The name of the DaemonSet that owns the pod, asking until the API answers.
async fn daemonset_owner(client: &Client, namespace: &str, pod_name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut delay = Duration::from_secs(1);
    loop {
        match pods.get_opt(pod_name).await {
            Ok(Some(pod)) => {
                return pod
                    .metadata
                    .owner_references
                    .into_iter()
                    .flatten()
                    .find(|o| o.kind == "DaemonSet")
                    .map(|o| o.name);
            }
            Ok(None) => return None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the agent's own pod yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
