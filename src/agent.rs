//! Wiring of the node agent, in the order it comes up: wait for the node lock (standing by
//! meanwhile), start the API side and the node side, drive reconcile passes, and stop cleanly on
//! SIGTERM or SIGINT, draining first when the agent is being uninstalled.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::config::{AgentArgs, ApiArgs, CriArgs, IdentityArgs, KubeletArgs, PathArgs};
use crate::cri::CriClient;
use crate::lock::{self, Holder, InstanceLock, Standby};
use crate::metrics::Metrics;
use crate::poller::{self, NodeSources, NodeView, SharedNodeView};
use crate::reconciler::{ApiSide, Pass, Reconciler, Settings};
use crate::store::Store;
use crate::watch::{Events, ObjectWatches, OwnerWatch, PodWatch, Tokens, Trigger};

/// Local state is looked at this often even when nothing changes (repairs, deadlines).
const RESYNC: Duration = Duration::from_secs(10);
/// How soon a pass whose wake-up time has already passed runs (see `until_due`).
const PAST_DUE: Duration = Duration::from_secs(1);
/// Passes run back to back while each one changes something, at most this many in a row.
const MAX_QUICK_PASSES: u32 = 5;
/// How long a SIGTERM during uninstall waits for the node to be clean (the chart gives 30s).
const DRAIN: Duration = Duration::from_secs(20);
/// While draining, passes that did nothing are retried this soon: the node is being emptied.
const DRAIN_RETRY: Duration = Duration::from_millis(200);

/// Runs the agent until SIGTERM or SIGINT. Returns an error only for bad configuration or a
/// foreign program on the admin port; an unreachable API server or runtime is a state to live
/// with, not a reason to exit.
///
/// A copy whose own credentials the API server keeps refusing hands the lock over and stands by
/// (issue 12.8), then competes for the lock again like any standby.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = args.identity.node_name()?;
    let sources = node_sources(&args.cri, &args.kubelet)?;
    let metrics = Metrics::new().context("registering metrics")?;
    let stop_requested = stop_signal()?;
    let lock_path = args.lock.path(&args.paths);
    let standby = Standby::new(&lock_path, args.timing.stall_after());
    let mut not_before = Instant::now();
    loop {
        let waited = wait_for_lock(
            &lock_path,
            args.timing.poll_interval,
            &standby,
            &stop_requested,
            not_before,
        )
        .await;
        standby.clear();
        let Some(lock) = waited? else {
            return Ok(());
        };
        let held = hold(
            &args,
            lock,
            &node_name,
            sources.clone(),
            &metrics,
            &stop_requested,
        )
        .await?;
        match held {
            Held::Stopped => return Ok(()),
            Held::HandedOver => {
                not_before = Instant::now() + handover_pause(args.timing.poll_interval);
            }
        }
    }
}

/// How a spell of holding the lock ended.
enum Held {
    /// Asked to stop (SIGTERM): the agent exits.
    Stopped,
    /// The API server refused this copy's credentials for too long: the lock was released.
    HandedOver,
}

/// How long a copy that handed the lock over leaves it to the other copy before competing for it
/// again: several of the other copy's polls, so it gets the lock first if it is there at all.
fn handover_pause(poll_interval: Duration) -> Duration {
    poll_interval.saturating_mul(3).max(HANDOVER_PAUSE_MIN)
}

/// The least [`handover_pause`].
const HANDOVER_PAUSE_MIN: Duration = Duration::from_secs(30);

/// How long `Events` still being sent may delay the exit (issue 11.7): an uninstall's Events are
/// sent in the background and would otherwise die with the process.
const EVENTS_FLUSH: Duration = Duration::from_secs(3);

/// Works while holding the lock: binds the admin port, starts the node side and the API side,
/// and runs passes until a stop request or a hand-over. Everything started here stops before the
/// lock is released, the admin port first, so the port is never served by a copy without it.
async fn hold(
    args: &AgentArgs,
    lock: InstanceLock,
    node_name: &str,
    sources: NodeSources,
    metrics: &Metrics,
    stop_requested: &CancellationToken,
) -> anyhow::Result<Held> {
    let (timing, paths) = (&args.timing, &args.paths);
    let lock_path = lock.path().to_owned();
    metrics.lock_held.set(1);
    tracing::info!(lock = %lock_path.display(), node = %node_name, "holding the node lock");
    lock::sweep_stale_standby(&lock_path);

    // The port only now, under the lock: whoever serves it is the copy that works (issue 12.4).
    let health = Health::new(timing.stall_after());
    let listener = match args.admin.bind().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, action = "admin_bind_failed", "cannot serve the admin port; stopping");
            return Err(e).context("admin server");
        }
    };
    let served = listener.local_addr().context("admin server address")?;
    lock.record(&Holder::me(Some(admin::local_address(served).to_string())))
        .with_context(|| format!("recording the holder in {}", lock_path.display()))?;
    let mut tasks = Tasks::start_admin(listener, metrics, &health);

    let store = open_store(paths)?;
    let me = args.identity.me(node_name);
    if me.is_none() {
        tracing::warn!("POD_NAME/POD_NAMESPACE not set: the agent will not checkpoint itself");
    }
    let trigger: Trigger = Arc::new(Notify::new());
    let api = ApiStarter {
        args: args.api.clone(),
        store: Store::new(paths.layout()),
        identity: args.identity.clone(),
        node_name: node_name.to_string(),
        trigger: trigger.clone(),
        metrics: metrics.clone(),
    }
    .spawn();
    let node = start_node_side(
        sources,
        timing.poll_interval,
        &trigger,
        metrics,
        &health,
        &mut tasks,
    );

    let settings = Settings {
        node_name: node_name.to_string(),
        me,
        grace: timing.grace_period,
        namespaces: args.identity.namespaces.clone(),
        fallback_timeout: timing.fallback_timeout,
        keep_active_on_uninstall: args.identity.keep_active_on_uninstall,
    };
    let reconciler = Reconciler::new(
        settings,
        store,
        metrics.clone(),
        node.view,
        node.runtime,
        None,
    );
    let mut passes = Passes::new(reconciler, health, trigger, metrics.clone());
    passes.api = Some(api);
    passes.unauthorized.after = args.api.api_unauthorized_handover;
    let outcome = passes.until(stop_requested, &mut tasks).await;
    if matches!(outcome, Ok(Until::Stop)) {
        passes.drain().await;
        passes.flush_events().await;
    }
    let stopped = tasks.stop().await;
    drop(passes);
    metrics.lock_held.set(0);
    drop(lock);
    match outcome? {
        Until::Stop => stopped.map(|()| Held::Stopped),
        Until::HandOver => {
            tracing::warn!(lock = %lock_path.display(), action = "handover", "the API server has refused this copy's credentials for too long: released the node lock and the admin port to the other copy; standing by");
            Ok(Held::HandedOver)
        }
    }
}

/// SIGTERM or SIGINT, noticed by one task for the agent's whole life. The lock wait and the
/// reconcile loop both watch the token it cancels, so a signal stops either the same way.
fn stop_signal() -> anyhow::Result<CancellationToken> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let requested = CancellationToken::new();
    let cancel = requested.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
    Ok(requested)
}

/// Only one copy works: the DaemonSet pod or its static copy, whichever holds the lock. The
/// other stands by without the admin port, beating its standby heartbeat file so that its exec
/// probe finds it alive and ready: the kubelet neither restarts it nor holds a rollout.
/// `None` when asked to stop before the lock came. The lock is not tried before `not_before` (a
/// copy that has just handed it over leaves it to the other).
async fn wait_for_lock(
    path: &Path,
    poll_interval: Duration,
    standby: &Standby,
    stop_requested: &CancellationToken,
    not_before: Instant,
) -> anyhow::Result<Option<InstanceLock>> {
    let mut beat_failed = false;
    let mut waiting_logged = false;
    loop {
        if Instant::now() >= not_before
            && let Some(lock) = InstanceLock::try_acquire(path)
                .with_context(|| format!("opening lock file {}", path.display()))?
        {
            return Ok(Some(lock));
        }
        if !waiting_logged {
            tracing::info!(lock = %path.display(), action = "standby", "another copy of the agent holds the node lock; standing by");
            waiting_logged = true;
        }
        match standby.beat() {
            Ok(()) => beat_failed = false,
            Err(e) if !beat_failed => {
                beat_failed = true;
                tracing::warn!(error = %e, "cannot write the standby heartbeat; this copy's probe will fail");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop_requested.cancelled() => return Ok(None),
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// The checkpoint store, with what an interrupted write left behind cleaned up: done only
/// under the lock, since the other copy may be writing until then.
fn open_store(paths: &PathArgs) -> anyhow::Result<Store> {
    let store = Store::new(paths.layout());
    let leftovers = store
        .prepare()
        .context("preparing checkpoint directories")?;
    if leftovers > 0 {
        tracing::info!(
            count = leftovers,
            "removed temporary files left by an interrupted write"
        );
    }
    Ok(store)
}

/// Builds the API side in the background, retrying with backoff while there is no usable
/// configuration (issue 10.7: a start-up failure used to leave the process without an API for its
/// whole life). Meanwhile the agent runs on the node view alone. An API server that is only down
/// is not a failure here: the watches start and reconnect when it returns.
struct ApiStarter {
    args: ApiArgs,
    /// A handle on the same directories as the reconciler's store, for the remembered API address.
    store: Store,
    identity: IdentityArgs,
    node_name: String,
    trigger: Trigger,
    metrics: Metrics,
}

/// First wait before building the API client again; doubles up to [`API_RETRY_MAX`].
const API_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between attempts at building the API client.
const API_RETRY_MAX: Duration = Duration::from_secs(60);

impl ApiStarter {
    /// The API side, delivered once built.
    fn spawn(self) -> tokio::sync::oneshot::Receiver<ApiSide> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut wait = API_RETRY_FIRST;
            let mut failures = 0_u32;
            let client = loop {
                match self.args.client(&self.store).await {
                    Ok(client) => break client,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::error!(
                                error = format!("{e:#}"),
                                action = "api_unreachable",
                                "no usable API server configuration; running on the node view alone and trying again"
                            );
                        } else {
                            tracing::debug!(
                                error = format!("{e:#}"),
                                failures,
                                "API configuration still unusable"
                            );
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(API_RETRY_MAX);
                    }
                }
            };
            if failures > 0 {
                tracing::info!(failures, "API server configuration loaded");
            }
            let _ = tx.send(self.api_side(client));
        });
        rx
    }

    /// The watches on the API server.
    fn api_side(&self, client: crate::config::ApiClients) -> ApiSide {
        let crate::config::ApiClients { watch, request } = client;
        let trigger = &self.trigger;
        ApiSide {
            pods: PodWatch::spawn(
                &watch,
                &self.node_name,
                &watched_namespaces(&self.identity, &self.node_name),
                trigger.clone(),
                self.metrics.clone(),
            ),
            objects: ObjectWatches::new(watch.clone(), trigger.clone(), self.metrics.clone()),
            tokens: Tokens::new(trigger.clone()),
            events: Events::new(request.clone(), &self.node_name),
            uninstall: self
                .identity
                .own_pod()
                .map(|(ns, name)| OwnerWatch::spawn(watch.clone(), ns, name, trigger.clone())),
            client: request,
        }
    }
}

/// The allow-list plus the agent's own namespace (see `Scope::watched_namespaces`).
fn watched_namespaces(identity: &IdentityArgs, node_name: &str) -> Vec<String> {
    let me = identity.me(node_name);
    let scope = pod_checkpointer_core::plan::Scope {
        node_name,
        namespaces: &identity.namespaces,
        me: me.as_ref(),
    };
    scope.watched_namespaces()
}

/// The runtime and the kubelet, at least one of them: without either the agent cannot tell
/// whether a parent runs, and would guess.
fn node_sources(cri: &CriArgs, kubelet: &KubeletArgs) -> anyhow::Result<NodeSources> {
    let cri = cri.client()?;
    let kubelet = kubelet.client()?;
    if cri.is_none() && kubelet.is_none() {
        bail!("set --cri-endpoint or --kubelet-url: the agent needs to know what runs on the node");
    }
    Ok(NodeSources { cri, kubelet })
}

/// What the node side hands the reconciler.
struct NodeSide {
    /// Kept current by the poller.
    view: SharedNodeView,
    /// Asked again before acting, since the view can be a poll interval old.
    runtime: Option<CriClient>,
}

/// The poller, asking the runtime and the kubelet what runs until the agent stops.
fn start_node_side(
    sources: NodeSources,
    poll_interval: Duration,
    trigger: &Trigger,
    metrics: &Metrics,
    health: &Arc<Health>,
    tasks: &mut Tasks,
) -> NodeSide {
    let view = Arc::new(Mutex::new(NodeView::default()));
    let runtime = sources.cri.clone();
    let poller = Poller {
        sources,
        poll_interval,
        view: view.clone(),
        trigger: trigger.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    tasks.poller = Some(poller.spawn(tasks.stop.clone()));
    tasks.poller_spec = Some(poller);
    NodeSide { view, runtime }
}

/// What it takes to (re)start the poller, kept so a poller that died can be started again.
struct Poller {
    sources: NodeSources,
    poll_interval: Duration,
    view: SharedNodeView,
    trigger: Trigger,
    metrics: Metrics,
    health: Arc<Health>,
}

impl Poller {
    fn spawn(&self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(poller::run(
            self.sources.clone(),
            self.poll_interval,
            self.view.clone(),
            self.trigger.clone(),
            self.metrics.clone(),
            self.health.clone(),
            stop,
        ))
    }

    /// A poller that ended before the agent stopped (a panic) is a frozen node view: the view
    /// becomes unknown at once (nothing is activated or deactivated on a stale answer), the
    /// death is logged, and a new poller starts.
    fn restart(
        &self,
        ended: Result<(), tokio::task::JoinError>,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        if let Ok(mut view) = self.view.lock() {
            *view = NodeView::default();
        }
        self.trigger.notify_one();
        let panicked = ended.as_ref().err().is_some_and(|e| e.is_panic());
        tracing::error!(
            action = "restart",
            component = "poller",
            panicked,
            "the node poller stopped: the node view is unknown until a new poller answers; restarting it"
        );
        self.spawn(stop)
    }
}

/// The reconcile loop: passes back to back while they act, otherwise when triggered (a watch or
/// the poller saw a change) or when the next one is due.
struct Passes {
    reconciler: Reconciler,
    health: Arc<Health>,
    trigger: Trigger,
    metrics: Metrics,
    /// Passes in a row that acted; past `MAX_QUICK_PASSES` the loop waits as usual.
    quick: u32,
    /// The API side while it is being built.
    api: Option<tokio::sync::oneshot::Receiver<ApiSide>>,
    /// The Events publisher of the API side, to flush at exit.
    events: Option<Events>,
    /// How long the API server has been refusing this copy's credentials.
    unauthorized: Unauthorized,
}

/// Why [`Passes::until`] returned.
enum Until {
    Stop,
    HandOver,
}

impl Passes {
    fn new(
        reconciler: Reconciler,
        health: Arc<Health>,
        trigger: Trigger,
        metrics: Metrics,
    ) -> Self {
        Self {
            reconciler,
            health,
            trigger,
            metrics,
            quick: 0,
            api: None,
            events: None,
            unauthorized: Unauthorized::default(),
        }
    }

    /// Waits (bounded) for the Events still being sent, an uninstall's above all.
    async fn flush_events(&self) {
        if let Some(events) = &self.events {
            events.flush(EVENTS_FLUSH).await;
        }
    }

    /// Passes until a stop is requested. A pass always runs to completion: stopping between
    /// passes never leaves a write half done. Watches over the agent's tasks meanwhile (issue
    /// 11.5): a poller that ends is restarted (its view unknown meanwhile); an admin server that
    /// ends is an error at once, not at shutdown, since without it nothing probes or scrapes this
    /// copy: the agent stops, the lock goes to the other copy and the kubelet restarts this one.
    async fn until(
        &mut self,
        stop_requested: &CancellationToken,
        tasks: &mut Tasks,
    ) -> anyhow::Result<Until> {
        loop {
            let pass = self.pass().await;
            if self.unauthorized.too_long(&self.metrics) {
                return Ok(Until::HandOver);
            }
            let wait = self.pace(&pass).unwrap_or_else(|| until_due(&pass));
            tokio::select! {
                _ = stop_requested.cancelled() => return Ok(Until::Stop),
                api = async { match self.api.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                    self.api = None;
                    if let Ok(api) = api {
                        self.events = Some(api.events.clone());
                        self.reconciler.attach_api(api);
                    }
                }
                _ = self.trigger.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                ended = &mut tasks.admin => {
                    let e = match ended {
                        Ok(Ok(())) => anyhow::anyhow!("admin server stopped"),
                        Ok(Err(e)) => anyhow::Error::new(e).context("admin server"),
                        Err(e) => anyhow::Error::new(e).context("admin server task"),
                    };
                    tracing::error!(action = "shutdown", component = "admin", error = format!("{e:#}"), "the admin server stopped: stopping, so the other copy or a restart takes over");
                    return Err(e);
                }
                ended = async { match tasks.poller.as_mut() { Some(p) => p.await, None => std::future::pending().await } } => {
                    if let Some(spec) = &tasks.poller_spec {
                        tasks.poller = Some(spec.restart(ended, tasks.stop.clone()));
                    }
                }
            }
        }
    }

    /// After a stop request while the agent's own DaemonSet is being deleted, keeps passing
    /// until the node holds no checkpoint of ours or `DRAIN` has passed, so an uninstall does
    /// not leave static pods behind. Otherwise returns at once: checkpoints stay as they are.
    async fn drain(&mut self) {
        if !self.reconciler.uninstalling() {
            return;
        }
        tracing::info!(action = "uninstall", "stopping after the node is clean");
        let until = Instant::now() + DRAIN;
        loop {
            let pass = self.pass().await;
            if pass.checkpoints_on_disk == Some(0) || Instant::now() >= until {
                return;
            }
            let wait = self.pace(&pass).unwrap_or(DRAIN_RETRY);
            tokio::select! {
                _ = self.trigger.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass, reported to the health endpoints.
    async fn pass(&mut self) -> Pass {
        let pass = self.reconciler.reconcile().await;
        self.health.beat();
        if self.reconciler.synced_once() {
            self.health.set_ready();
        }
        pass
    }

    /// `Some(zero)` when the next pass should start at once: a step done (say, another
    /// checkpoint removed) may make the next one possible now. Capped, so a pass that always
    /// acts cannot spin.
    fn pace(&mut self, pass: &Pass) -> Option<Duration> {
        self.quick = if pass.acted { self.quick + 1 } else { 0 };
        (pass.acted && self.quick <= MAX_QUICK_PASSES).then_some(Duration::ZERO)
    }
}

/// Tracks how long the pod watch has failed with 401 (the API server refuses this copy's token)
/// without a break, so a copy with an expired token hands the lock over instead of holding it
/// (issue 12.8). Read from the metrics the watch already keeps, so the watch needs no new hook.
#[derive(Debug)]
struct Unauthorized {
    /// `api_errors_total{resource="pods",reason="unauthorized"}` at the last look.
    seen: u64,
    /// The first 401 of the current run of them.
    since: Option<Instant>,
    /// The last new 401.
    last: Option<Instant>,
    /// How long a run of 401s may last before the lock is handed over.
    after: Duration,
}

/// Without a new 401 for this long, a run of them is over (the errors changed or stopped).
const UNAUTHORIZED_QUIET: Duration = Duration::from_secs(60);

impl Default for Unauthorized {
    fn default() -> Self {
        Self {
            seen: 0,
            since: None,
            last: None,
            after: Duration::from_secs(120),
        }
    }
}

impl Unauthorized {
    /// True once the API has refused this copy for `after` while nothing reached it.
    fn too_long(&mut self, metrics: &Metrics) -> bool {
        let count = metrics
            .api_errors
            .with_label_values(&["pods", "unauthorized"])
            .get();
        let now = Instant::now();
        if metrics.api_reachable.get() == 1 {
            self.since = None;
        } else if count > self.seen {
            self.since.get_or_insert(now);
            self.last = Some(now);
        } else if self.last.is_none_or(|at| now - at > UNAUTHORIZED_QUIET) {
            self.since = None;
        }
        self.seen = count;
        self.since.is_some_and(|since| now - since >= self.after)
    }
}

/// Until the pass's own next deadline, and never longer than `RESYNC`. A deadline already past
/// (it fell due during the pass, or the clock stepped) is looked at after `PAST_DUE`, not after
/// a resync; never sooner, so a source that keeps reporting a past time (a token refresh that
/// keeps failing) cannot make the loop spin.
fn until_due(pass: &Pass) -> Duration {
    pass.wake_at.map_or(RESYNC, |at| {
        let ahead = at.duration_since(jiff::Timestamp::now());
        Duration::try_from(ahead).map_or(PAST_DUE, |d| d.min(RESYNC))
    })
}

/// The agent's background tasks, stopped together in one place.
struct Tasks {
    /// Cancelled once the last pass is done; the admin server and the poller watch it.
    stop: CancellationToken,
    admin: JoinHandle<std::io::Result<()>>,
    poller: Option<JoinHandle<()>>,
    /// How to start the poller again should it die.
    poller_spec: Option<Poller>,
}

impl Tasks {
    /// The admin server on the port bound under the lock.
    fn start_admin(
        listener: tokio::net::TcpListener,
        metrics: &Metrics,
        health: &Arc<Health>,
    ) -> Self {
        let stop = CancellationToken::new();
        let admin = tokio::spawn({
            let (metrics, health, stop) = (metrics.clone(), health.clone(), stop.clone());
            async move {
                admin::serve_listener(listener, metrics, health, stop).await;
                Ok(())
            }
        });
        Self {
            stop,
            admin,
            poller: None,
            poller_spec: None,
        }
    }

    /// Stops every task; an admin server that failed (say, its address was not valid) is the
    /// agent's error.
    async fn stop(self) -> anyhow::Result<()> {
        tracing::info!(
            action = "shutdown",
            "stopping; checkpoints stay as they are"
        );
        if let Some(poller) = self.poller {
            poller.abort();
        }
        self.stop.cancel();
        if self.admin.is_finished() {
            // Already reported by the pass loop.
            return Ok(());
        }
        match self.admin.await {
            Ok(Err(e)) => Err(e).context("admin server"),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_at(at: jiff::Timestamp) -> Pass {
        Pass {
            wake_at: Some(at),
            acted: false,
            checkpoints_on_disk: Some(0),
        }
    }

    /// Issue 11.5: a poller that died leaves a frozen node view; it becomes unknown at once and
    /// a new poller is started.
    #[tokio::test]
    async fn a_dead_poller_turns_the_node_view_unknown_and_is_restarted() {
        let view = Arc::new(Mutex::new(NodeView {
            running: crate::model::Observation::Known(Default::default()),
            kubelet_pods: crate::model::Observation::Known(Vec::new()),
        }));
        let health = Health::new(Duration::from_secs(60));
        let poller = Poller {
            sources: NodeSources {
                cri: None,
                kubelet: None,
            },
            poll_interval: Duration::from_secs(3600),
            view: view.clone(),
            trigger: Arc::new(Notify::new()),
            metrics: Metrics::new().expect("metrics"),
            health: health.clone(),
        };
        let died = tokio::spawn(async { panic!("a poller bug") }).await;
        let stop = CancellationToken::new();
        let restarted = poller.restart(died.map(|_: ()| ()), stop.clone());
        assert_eq!(
            *view.lock().expect("view"),
            NodeView::default(),
            "a frozen view is unknown"
        );
        // The new poller runs: its first tick comes at once and beats the node side.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !restarted.is_finished() && Instant::now() < deadline && !node_beat(&health) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(node_beat(&health), "the restarted poller polls");
        stop.cancel();
    }

    /// Whether the poller has beaten (the node side counts as alive well past `stall_after`
    /// only once it has).
    fn node_beat(health: &Health) -> bool {
        health.node_beaten()
    }

    #[test]
    fn a_wake_up_already_past_runs_the_next_pass_soon_not_after_a_resync() {
        let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(5);
        assert!(until_due(&due_at(past)) <= Duration::from_secs(1));
    }

    #[test]
    fn a_wake_up_ahead_waits_for_it_but_never_past_a_resync() {
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
        let wait = until_due(&due_at(soon));
        assert!(wait > Duration::from_secs(2) && wait <= Duration::from_secs(3));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        assert_eq!(until_due(&due_at(later)), RESYNC);
    }
}
