//! The loop that feeds the pure core and carries out what it decides. One pass: collect the API,
//! node and disk views, sanitize every parent, [`decide`], then write, activate, deactivate and
//! remove through the [`Store`], reporting each state change once in logs, metrics and Events.
//! Every rule (which pods, which checkpoints, replaced or not, which tokens) is in the core's
//! [`plan`]; this module only gathers, calls and carries out; `report` says what happened.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use pod_checkpointer_core::plan::{self, Scope, Views, key_of};

use crate::cri::CriClient;
use crate::decide::{self, Action, DeactivateReason, Inputs, OnDiskState, Yield};
use crate::metrics::Metrics;
use crate::model::{Observation, PodKey};
use crate::poller::SharedNodeView;
use crate::sanitize::{self, Checkpoint, Objects, Refusal};
use crate::store::{DiskView, StateFile, Store};
use crate::watch::{Events, ObjectKind, ObjectRef, ObjectState, ObjectWatches, PodWatch, Tokens};

/// Kept for callers of the old path; the rule lives in the core.
pub use pod_checkpointer_core::plan::started_here;

mod report;

/// What the reconciler needs to know about its place in the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_name: String,
    /// The agent's own parent, when it knows its pod name.
    pub me: Option<PodKey>,
    pub grace: Duration,
    /// Namespaces to checkpoint; empty means all.
    pub namespaces: Vec<String>,
    /// How long a successor that made a copy yield has to become Ready (SPEC §4 "Fallback").
    pub fallback_timeout: Duration,
    /// Keep checkpoints whose copy runs when the agent leaves the node (see `Inputs::keep_active`).
    pub keep_active_on_uninstall: bool,
}

/// The API-facing parts; absent only in tests of the offline paths.
pub struct ApiSide {
    pub client: Client,
    pub pods: PodWatch,
    pub objects: ObjectWatches,
    pub tokens: Tokens,
    pub events: Events,
    /// Set once the agent's own DaemonSet is being deleted.
    pub uninstall: Option<crate::watch::OwnerWatch>,
}

/// Why a parent has no fresh checkpoint this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Skip {
    /// A referenced object has not been seen yet: wait, do not treat it as missing.
    Waiting,
    /// The parent cannot be checkpointed as it stands.
    Refused(Refusal),
}

/// Long-lived reconciler state: what it wrote, the deadlines, and what it last reported.
pub struct Reconciler {
    settings: Settings,
    store: Store,
    metrics: Metrics,
    node: SharedNodeView,
    /// Asked again at the start of every pass: an API event ("the parent runs") can arrive
    /// before the next poll would have seen it, and a stale "not running" must not activate.
    runtime: Option<CriClient>,
    api: Option<ApiSide>,
    written: BTreeMap<PodKey, u64>,
    deadlines: BTreeMap<PodKey, Timestamp>,
    /// Checkpoints that yielded to a successor, and how that stands.
    yields: BTreeMap<PodKey, Yield>,
    /// Since when the API has answered without a break: an outage does not count toward grace.
    /// Kept on the monotonic clock, as the question is "how long": a wall clock step must not
    /// count toward grace (or take from it).
    api_since: Option<Instant>,
    refused: BTreeMap<PodKey, Refusal>,
    /// The last API copy of each parent, kept while its checkpoint is on disk (succession,
    /// Events on removal).
    remembered: plan::Remembered,
    synced_once: bool,
    /// Whether the last disk scan succeeded (`None` before the first): a failure is logged and
    /// counted once per transition, not once per pass.
    disk_readable: Option<bool>,
    /// Checkpoints whose activation time is exported, so only series that are gone are removed.
    activated_series: BTreeSet<PodKey>,
    /// Actions failing since an earlier pass, by checkpoint and action, with the reason logged:
    /// a lasting failure is logged when it starts, changes and ends, not on every pass.
    failing: BTreeMap<(PodKey, &'static str), &'static str>,
    /// Duplicate manifest files already reported.
    duplicates: BTreeSet<std::path::PathBuf>,
    /// Checkpoints kept on leaving the node, already reported.
    kept: BTreeSet<PodKey>,
    /// Since when an API side being built is expected (see [`Reconciler::expect_api`]).
    api_expected_since: Option<Instant>,
}

impl Reconciler {
    /// Loads the persisted deadlines. A corrupt deadline file is reported and treated as empty:
    /// that only delays removals, it never removes anything early. A deadline more than one
    /// grace period ahead is brought in to now + grace.
    pub fn new(
        settings: Settings,
        store: Store,
        metrics: Metrics,
        node: SharedNodeView,
        runtime: Option<CriClient>,
        api: Option<ApiSide>,
    ) -> Self {
        let mut deadlines = store.load_deadlines().unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not read grace deadlines; starting without them");
            BTreeMap::new()
        });
        // A deadline is set one grace period ahead, so one further out comes from a clock that
        // stepped back or a damaged file: it must not keep a stale copy for hours.
        let latest = Timestamp::now()
            .checked_add(settings.grace)
            .unwrap_or(Timestamp::MAX);
        let mut clamped = 0;
        for (key, at) in deadlines.iter_mut().filter(|(_, at)| **at > latest) {
            tracing::warn!(namespace = %key.namespace, pod = %key.name, remove_at = %at, now_at_most = %latest, "grace deadline lies beyond one grace period; bringing it in");
            *at = latest;
            clamped += 1;
        }
        if clamped > 0
            && let Err(e) = store.save_deadlines(&deadlines)
        {
            metrics.write_errors.inc();
            tracing::error!(error = %e, "could not persist grace deadlines");
        }
        let yields = load_yields(&store);
        Self {
            settings,
            store,
            metrics,
            node,
            runtime,
            api,
            written: BTreeMap::new(),
            deadlines,
            yields,
            api_since: None,
            refused: BTreeMap::new(),
            remembered: plan::Remembered::default(),
            synced_once: false,
            disk_readable: None,
            activated_series: BTreeSet::new(),
            failing: BTreeMap::new(),
            duplicates: BTreeSet::new(),
            kept: BTreeSet::new(),
            api_expected_since: None,
        }
    }

    /// Gives the reconciler its API side once it has been built: the agent retries building it
    /// after a failed start (issue 10.7) and runs on the node view meanwhile.
    pub fn attach_api(&mut self, api: ApiSide) {
        self.api = Some(api);
    }

    /// Says an API side is being built and will be attached: until it is, the view is as
    /// incomplete as with a pod watch that has not answered yet.
    pub fn expect_api(&mut self) {
        self.api_expected_since.get_or_insert_with(Instant::now);
    }

    /// Whether the API's side of the view is in (SPEC §5, "a complete view"): the pod watch has
    /// answered or had its short bound; with an API side still being built, the same bound
    /// counts from when it was expected; with none expected, there is nothing to wait for.
    fn api_settled(&self) -> bool {
        self.api_settles_at().is_none()
    }

    /// When an unsettled view stops waiting for the API.
    fn api_settles_at(&self) -> Option<Instant> {
        match (&self.api, self.api_expected_since) {
            (Some(api), _) => api.pods.settles_at(),
            (None, Some(since)) => {
                let bound = since + crate::watch::FIRST_ANSWER;
                (Instant::now() < bound).then_some(bound)
            }
            (None, None) => None,
        }
    }

    /// True once a pass has run with the API's initial list in hand.
    pub fn synced_once(&self) -> bool {
        self.synced_once
    }

    /// True once the agent's own DaemonSet is being deleted.
    pub fn uninstalling(&self) -> bool {
        self.api
            .as_ref()
            .and_then(|a| a.uninstall.as_ref())
            .is_some_and(|u| u.deleted())
    }

    /// One reconcile pass.
    pub async fn reconcile(&mut self) -> Pass {
        let started = Instant::now();
        self.remember_owner();
        let mut node = self.node.lock().map(|v| v.clone()).unwrap_or_default();
        if let Some(cri) = &self.runtime {
            node.running = match cri.running().await {
                Ok(r) => Observation::Known(r),
                Err(_) => Observation::Unknown,
            };
        }
        // Whether the view is complete is read before the API's list, never after: a watch that
        // syncs in between would otherwise make an empty snapshot look like a settled "unknown".
        let api_settled = self.api_settled();
        let api_pods = self.api.as_ref().and_then(|a| a.pods.pods());
        self.api_since = match (api_pods.is_some(), self.api_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(Instant::now()),
            (false, _) => None,
        };
        self.metrics
            .api_reachable
            .set(i64::from(api_pods.is_some()));

        // Parents: the API's when it answers; else what the kubelet still knows. Whether the
        // agent was replaced is read off every pod the API lists, opted in or not.
        let owner = self.store.read_state(StateFile::Owner).ok().flatten();
        let plan::Listing { parents, replaced } = plan::listing(
            &scope_of(&self.settings),
            api_pods.as_deref(),
            &node.kubelet_pods,
            owner.as_deref(),
        );
        if api_pods.is_some() {
            // Remember parents after they leave the API: their removal is reported on them.
            self.remembered.listed(&parents);
            self.synced_once = true;
        }

        self.fetch_references(&parents, api_pods.is_some());
        // Unknown is not empty: without a disk view nothing is written (it could replace a
        // checkpoint the guards below would keep), removed or activated, the drain does not end,
        // and the gauges keep their last values.
        let Some(disk) = self.scan() else {
            self.metrics
                .reconcile_duration
                .observe(started.elapsed().as_secs_f64());
            return Pass {
                wake_at: self.token_refresh(api_pods.is_some()),
                acted: false,
                checkpoints_on_disk: None,
            };
        };
        let checkpoints_on_disk = disk.checkpoints.len();
        let mut checkpoints = BTreeMap::new();
        let keys: Vec<PodKey> = parents.iter().map(|p| key_of(p)).collect();
        let mut refused = plan::name_collisions(&keys, |k| disk.checkpoints.contains_key(k));
        for (parent, key) in parents.iter().zip(keys) {
            if refused.contains_key(&key) {
                continue;
            }
            match self.sanitize(parent, &key) {
                Ok(cp) => {
                    if !plan::loses_token(&cp, disk.checkpoints.contains_key(&key)) {
                        checkpoints.insert(key, cp);
                    }
                }
                Err(Skip::Waiting) => {}
                Err(Skip::Refused(r)) => {
                    refused.insert(key, r);
                }
            }
        }
        self.report_refusals(refused);

        let views = Views::new(
            api_pods.is_some(),
            &parents,
            &checkpoints,
            disk.checkpoints.iter().map(|(k, d)| {
                let state = OnDiskState {
                    inactive: d.inactive.is_some(),
                    active: d.active.is_some(),
                };
                (k.clone(), state)
            }),
        );
        let kubelet = plan::kubelet_parents(&scope_of(&self.settings), &node.kubelet_pods);
        let remembered = self.remembered.facts();
        let now = Timestamp::now();
        // `decide` takes wall-clock times; the elapsed part is measured, not read off the clock.
        let api_since = self
            .api_since
            .map(|since| now.checked_sub(since.elapsed()).unwrap_or(Timestamp::MIN));
        let decision = decide::decide(&Inputs {
            now,
            grace: self.settings.grace,
            node_name: &self.settings.node_name,
            me: self.settings.me.as_ref(),
            api: &views.api,
            kubelet: &kubelet,
            remembered: &remembered,
            yields: &self.yields,
            fallback_timeout: self.settings.fallback_timeout,
            running: &node.running,
            api_settled,
            desired: &views.desired,
            written: &self.written,
            disk: &views.disk,
            api_since,
            deadlines: &self.deadlines,
            uninstalling: self.uninstalling(),
            replaced,
            keep_active: self.settings.keep_active_on_uninstall,
        });
        self.report_kept(&decision.kept);

        let deadlines_before = self.deadlines.clone();
        let yields_before = self.yields.clone();
        let mut failed: BTreeSet<PodKey> = BTreeSet::new();
        let mut acted = false;
        for action in &decision.actions {
            if failed.contains(action.key()) {
                continue;
            }
            let result = self.apply(action, &checkpoints);
            self.report_outcome(action, &result);
            acted |= result.is_ok();
            if result.is_err() {
                let key = action.key();
                // A failed refresh leaves the checkpoint that was on disk in place (the manifest
                // is replaced last, atomically): what follows, activating it included, must not
                // depend on refreshing it. Without one on disk there is nothing to go on with.
                let on_disk = disk
                    .checkpoints
                    .get(key)
                    .is_some_and(|d| d.inactive.is_some());
                if !(matches!(action, Action::WriteInactive(_)) && on_disk) {
                    failed.insert(key.clone());
                }
            }
        }
        let on_disk = |k: &PodKey| disk.checkpoints.contains_key(k) || checkpoints.contains_key(k);
        self.remembered.forget_gone(on_disk);
        self.failing.retain(|(k, _), _| on_disk(k));
        self.yields.retain(|k, _| on_disk(k));
        if self.deadlines != deadlines_before
            && let Err(e) = self.store.save_deadlines(&self.deadlines)
        {
            self.metrics.write_errors.inc();
            tracing::error!(error = %e, "could not persist grace deadlines");
        }
        if self.yields != yields_before
            && let Err(e) = self.store.save_yields(&self.yields)
        {
            self.metrics.write_errors.inc();
            tracing::error!(error = %e, "could not persist yields to successors");
        }

        self.report_states(&node.running);
        self.metrics
            .reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        let wake_at = [
            decision.wake_at,
            self.token_refresh(api_pods.is_some()),
            self.view_settles_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        Pass {
            wake_at,
            acted,
            // Those kept on purpose are not waited for.
            checkpoints_on_disk: Some(checkpoints_on_disk.saturating_sub(decision.kept.len())),
        }
    }

    /// When a view still waiting for the pod watch's first answer stops waiting: a pass must run
    /// then, even if the watch never says anything.
    fn view_settles_at(&self) -> Option<Timestamp> {
        self.api_settles_at().map(wall_time)
    }

    /// When a service-account token is next due for refresh, while the API answers.
    fn token_refresh(&self, api_up: bool) -> Option<Timestamp> {
        let at = self
            .api
            .as_ref()?
            .tokens
            .next_refresh()
            .filter(|_| api_up)?;
        Some(wall_time(at.into_std()))
    }

    /// Records the agent's DaemonSet for its static copy, once the API has named it.
    fn remember_owner(&self) {
        let Some(owner) = self
            .api
            .as_ref()
            .and_then(|a| a.uninstall.as_ref())
            .and_then(|u| u.owner())
        else {
            return;
        };
        if self
            .store
            .read_state(StateFile::Owner)
            .ok()
            .flatten()
            .as_deref()
            != Some(&owner)
            && let Err(e) = self.store.write_state(StateFile::Owner, &owner)
        {
            tracing::warn!(error = %e, "could not remember the agent's DaemonSet");
        }
    }

    /// Keeps object watches on exactly what the parents reference, and their tokens fresh.
    fn fetch_references(&mut self, parents: &[Arc<Pod>], api_up: bool) {
        let scope = scope_of(&self.settings);
        let Some(api) = self.api.as_mut() else {
            return;
        };
        if !api_up {
            // Keep the watches (they reconnect by themselves) and the tokens we have.
            return;
        }
        let mut wanted = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for parent in parents {
            let key = key_of(parent);
            let ns = &key.namespace;
            let refs = sanitize::references(parent);
            for name in refs.secrets {
                wanted.insert(ObjectRef {
                    kind: ObjectKind::Secret,
                    namespace: ns.clone(),
                    name,
                });
            }
            for name in refs.config_maps {
                wanted.insert(ObjectRef {
                    kind: ObjectKind::ConfigMap,
                    namespace: ns.clone(),
                    name,
                });
            }
            if !refs.tokens.is_empty() {
                let bind = scope.binds_token(&key);
                api.tokens
                    .refresh(&api.client, parent, &refs.tokens, bind, &self.metrics);
            }
            keys.insert((key, parent.metadata.uid.clone().unwrap_or_default()));
        }
        api.objects.ensure(&wanted);
        api.tokens.retain(&keys);
    }

    /// Sanitizes one parent with the objects and tokens at hand.
    fn sanitize(&self, parent: &Pod, key: &PodKey) -> Result<Checkpoint, Skip> {
        let refs = sanitize::references(parent);
        let mut objects = Objects::default();
        if let Some(api) = &self.api {
            for (kind, names) in [
                (ObjectKind::Secret, &refs.secrets),
                (ObjectKind::ConfigMap, &refs.config_maps),
            ] {
                for name in names {
                    let r = ObjectRef {
                        kind,
                        namespace: key.namespace.clone(),
                        name: name.clone(),
                    };
                    let data = match api.objects.get(&r) {
                        ObjectState::Found(data) => data,
                        ObjectState::Missing => continue,
                        // Unknown or refused: deciding "missing" now could drop a file that
                        // exists. Keep the checkpoint on disk as it is.
                        ObjectState::Pending | ObjectState::Failed(_) => {
                            return Err(Skip::Waiting);
                        }
                    };
                    match kind {
                        ObjectKind::Secret => objects.secrets.insert(name.clone(), data),
                        ObjectKind::ConfigMap => objects.config_maps.insert(name.clone(), data),
                    };
                }
            }
            let uid = parent.metadata.uid.as_deref().unwrap_or_default();
            objects.tokens = api.tokens.for_pod(key, uid);
        } else if !refs.secrets.is_empty() || !refs.config_maps.is_empty() {
            return Err(Skip::Waiting);
        }
        sanitize::sanitize(parent, &objects, self.store.layout()).map_err(Skip::Refused)
    }

    /// The checkpoints this agent manages: those in its namespaces (the static pod directory is
    /// shared with other agents and other tools), and always its own. `None` when the
    /// directories could not be read: unknown, which is not "no checkpoints".
    fn scan(&mut self) -> Option<DiskView> {
        let result = self.store.scan();
        let readable = result.is_ok();
        let was = self.disk_readable.replace(readable);
        self.metrics.disk_readable.set(i64::from(readable));
        match result {
            Ok(mut view) => {
                if was == Some(false) {
                    tracing::info!("the checkpoint directories can be read again");
                }
                let scope = scope_of(&self.settings);
                view.checkpoints.retain(|k, _| scope.manages(k));
                for (path, why) in &view.unreadable {
                    tracing::debug!(path = %path.display(), error = %why, "ignoring an unreadable manifest");
                }
                let duplicates: BTreeSet<_> =
                    view.duplicates.iter().map(|(_, p)| p.clone()).collect();
                for (key, path) in &view.duplicates {
                    if !self.duplicates.contains(path) {
                        tracing::warn!(namespace = %key.namespace, pod = %key.name, duplicate = %path.display(), "two manifest files hold the same checkpoint; the canonically named one is used, the other is left alone");
                    }
                }
                self.duplicates = duplicates;
                Some(view)
            }
            Err(e) => {
                if was != Some(false) {
                    self.metrics.write_errors.inc();
                    tracing::error!(error = %e, "could not read the checkpoint directories; acting on nothing that depends on them until they can be read");
                }
                None
            }
        }
    }

    /// Carries out one action and reports it.
    fn apply(
        &mut self,
        action: &Action,
        checkpoints: &BTreeMap<PodKey, Checkpoint>,
    ) -> Result<(), ActionError> {
        let key = action.key().clone();
        let (ns, pod) = (key.namespace.as_str(), key.name.as_str());
        match action {
            Action::WriteInactive(_) => {
                let Some(cp) = checkpoints.get(&key) else {
                    return Ok(());
                };
                let outcome = self
                    .store
                    .write_inactive(&key, &cp.manifest_bytes(), &cp.files)
                    .map_err(ActionError::store)?;
                self.written.insert(key.clone(), cp.digest());
                if outcome.manifest_changed || outcome.files_changed > 0 {
                    tracing::info!(
                        namespace = ns,
                        pod,
                        action = "write",
                        files_changed = outcome.files_changed,
                        manifest_changed = outcome.manifest_changed,
                        "checkpoint written"
                    );
                }
            }
            Action::Activate(_) | Action::Fallback(_) => {
                self.store.activate(&key).map_err(ActionError::store)?;
                self.metrics.activations.inc();
                if matches!(action, Action::Fallback(_)) {
                    self.metrics.fallbacks.inc();
                    tracing::warn!(
                        namespace = ns,
                        pod,
                        action = "fallback",
                        "the successor was not Ready within the fallback timeout: the last known good copy runs again"
                    );
                    self.event(&key, "CheckpointFallback", "Activate", "The newer pod that replaced this one did not become Ready within the fallback timeout; the last known good checkpoint was activated again.");
                } else {
                    tracing::info!(
                        namespace = ns,
                        pod,
                        action = "activate",
                        "checkpoint activated: the kubelet now runs the copy"
                    );
                    self.event(&key, "CheckpointActivated", "Activate", "The parent is not running on this node; its checkpoint was activated as a static pod.");
                }
            }
            Action::Deactivate(_, reason) => {
                self.store.deactivate(&key).map_err(ActionError::store)?;
                // Rewritten on the next pass, which prunes what only the copy still needed.
                self.written.remove(&key);
                let label = match reason {
                    DeactivateReason::ParentRunning => "parent_running",
                    DeactivateReason::Removal => "removal",
                    DeactivateReason::Replaced => "replaced",
                };
                self.metrics.deactivations.with_label_values(&[label]).inc();
                tracing::info!(
                    namespace = ns,
                    pod,
                    action = "deactivate",
                    reason = label,
                    "checkpoint deactivated"
                );
                let note = match reason {
                    DeactivateReason::ParentRunning => {
                        "The parent runs again on this node; its checkpoint was deactivated."
                    }
                    DeactivateReason::Removal => {
                        "The parent is no longer scheduled on this node; its checkpoint was deactivated before removal."
                    }
                    DeactivateReason::Replaced => {
                        "A newer pod of the same controller started on this node; the checkpoint yielded its ports to it."
                    }
                };
                self.event(&key, "CheckpointDeactivated", "Deactivate", note);
            }
            Action::Remove(_) => {
                self.store.remove(&key).map_err(ActionError::store)?;
                self.written.remove(&key);
                self.metrics.removals.inc();
                tracing::info!(
                    namespace = ns,
                    pod,
                    action = "remove",
                    "checkpoint removed with its files"
                );
                self.event(&key, "CheckpointRemoved", "Remove", "The parent is no longer scheduled on this node; its checkpoint and files were removed.");
                self.remembered.forget(&key);
                self.yields.remove(&key);
            }
            Action::SetYield(_, state) => {
                let successor = state.successor.as_str();
                match (state.ready_seen, state.fell_back) {
                    (true, _) => tracing::info!(
                        namespace = ns,
                        pod,
                        action = "yield",
                        successor,
                        "the successor is Ready: the checkpoint stays down and goes after the grace period"
                    ),
                    (false, true) => {}
                    (false, false) => {
                        tracing::info!(namespace = ns, pod, action = "yield", successor, fallback_at = %state.since.checked_add(self.settings.fallback_timeout).unwrap_or(Timestamp::MAX), "a successor started: the checkpoint yields to it until it is Ready or the fallback timeout ends")
                    }
                }
                self.yields.insert(key.clone(), state.clone());
            }
            Action::SetDeadline(_, at) => {
                self.deadlines.insert(key.clone(), *at);
                tracing::info!(namespace = ns, pod, action = "grace_start", remove_at = %at, "parent no longer listed on this node; checkpoint will be removed after the grace period");
            }
            Action::ClearDeadline(_) => {
                self.deadlines.remove(&key);
                tracing::info!(
                    namespace = ns,
                    pod,
                    action = "grace_cancel",
                    "parent listed again; removal cancelled"
                );
            }
        }
        Ok(())
    }
}

/// What one reconcile pass reports to the loop.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// When the next pass is due even if nothing changes.
    pub wake_at: Option<Timestamp>,
    /// Something changed on disk: look again at once, the next step may be ready.
    pub acted: bool,
    /// Checkpoints this agent manages that were on disk at the start of the pass; `None` when
    /// the disk could not be read (unknown, not empty: an uninstall drain goes on).
    pub checkpoints_on_disk: Option<usize>,
}

/// The wall-clock time of a monotonic instant, for `decide`'s wake-up times.
fn wall_time(at: Instant) -> Timestamp {
    let ahead = at.saturating_duration_since(Instant::now());
    Timestamp::now()
        .checked_add(ahead)
        .unwrap_or(Timestamp::MAX)
}

/// Where this agent works, as the core's rules take it.
fn scope_of(settings: &Settings) -> Scope<'_> {
    Scope {
        node_name: &settings.node_name,
        namespaces: &settings.namespaces,
        me: settings.me.as_ref(),
    }
}

/// A failed action, ready for a log line.
struct ActionError {
    reason: &'static str,
    message: String,
}

impl ActionError {
    fn store(e: crate::store::StoreError) -> Self {
        Self {
            reason: e.reason(),
            message: e.to_string(),
        }
    }
}

/// The yields an earlier run persisted. A corrupt file is reported and treated as empty: a
/// successor then gets a fresh fallback timeout, nothing runs early. A yield dated in the future
/// (a clock stepped back) counts from now.
fn load_yields(store: &Store) -> BTreeMap<PodKey, Yield> {
    let mut yields = store.load_yields().unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not read yields to successors; starting without them");
        BTreeMap::new()
    });
    let now = Timestamp::now();
    for y in yields.values_mut().filter(|y| y.since > now) {
        y.since = now;
    }
    yields
}
