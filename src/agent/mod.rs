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
use crate::reconciler::{ApiSide, Reconciler, Settings};
use crate::store::Store;
use crate::watch::{Events, ObjectWatches, OwnerWatch, PodWatch, Tokens, Trigger};

mod passes;
use passes::{Passes, Until};

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
    let mut reconciler = Reconciler::new(
        settings,
        store,
        metrics.clone(),
        node.view,
        node.runtime,
        None,
    );
    // Its API side comes from `api` once built: until then the view is not complete.
    reconciler.expect_api();
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
}
