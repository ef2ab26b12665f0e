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

/// Runs the agent until SIGTERM or SIGINT. Returns an error only for bad configuration; an
/// unreachable API server or runtime is a state to live with, not a reason to exit.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let AgentArgs {
        identity,
        api,
        cri,
        kubelet,
        timing,
        admin,
        log: _,
        lock,
        paths,
    } = args;
    let node_name = identity.node_name()?;
    let sources = node_sources(&cri, &kubelet)?;
    let metrics = Metrics::new().context("registering metrics")?;
    let stop_requested = stop_signal()?;

    let lock_path = lock.path(&paths);
    let standby = Standby::new(&lock_path, timing.stall_after());
    let waited = wait_for_lock(&lock_path, timing.poll_interval, &standby, &stop_requested).await;
    standby.clear();
    let Some(lock) = waited? else {
        return Ok(());
    };
    metrics.lock_held.set(1);
    tracing::info!(lock = %lock_path.display(), node = %node_name, "holding the node lock");
    lock::sweep_stale_standby(&lock_path);

    // The port only now, under the lock: whoever serves it is the copy that works (issue 12.4).
    let health = Health::new(timing.stall_after());
    let listener = match admin.bind().await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, action = "admin_bind_failed", "cannot serve the admin port; stopping");
            return Err(e).context("admin server");
        }
    };
    let served = listener.local_addr().context("admin server address")?;
    lock.record(&Holder::me(Some(admin::local_address(served).to_string())))
        .with_context(|| format!("recording the holder in {}", lock_path.display()))?;
    let mut tasks = Tasks::start_admin(listener, &metrics, &health);

    let store = open_store(&paths)?;
    let me = identity.me(&node_name);
    if me.is_none() {
        tracing::warn!("POD_NAME/POD_NAMESPACE not set: the agent will not checkpoint itself");
    }
    let trigger: Trigger = Arc::new(Notify::new());
    let api = start_api_side(&api, &store, &identity, &node_name, &trigger, &metrics).await;
    let node = start_node_side(
        sources,
        timing.poll_interval,
        &trigger,
        &metrics,
        &health,
        &mut tasks,
    );

    let settings = Settings {
        node_name,
        me,
        grace: timing.grace_period,
        namespaces: identity.namespaces,
        fallback_timeout: timing.fallback_timeout,
    };
    let reconciler = Reconciler::new(settings, store, metrics, node.view, node.runtime, api);
    let mut passes = Passes::new(reconciler, health, trigger);
    let outcome = passes.until(&stop_requested, &mut tasks).await;
    if outcome.is_ok() {
        passes.drain().await;
    }
    let stopped = tasks.stop().await;
    drop(lock);
    outcome.and(stopped)
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
/// `None` when asked to stop before the lock came.
async fn wait_for_lock(
    path: &Path,
    poll_interval: Duration,
    standby: &Standby,
    stop_requested: &CancellationToken,
) -> anyhow::Result<Option<InstanceLock>> {
    let mut beat_failed = false;
    let mut waiting_logged = false;
    loop {
        if let Some(lock) = InstanceLock::try_acquire(path)
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

/// The watches on the API server, or `None` when there is no configuration to reach it: the
/// agent then keeps the checkpoints it has on the node view alone. An API server that is only
/// down is not `None`: the watches start and reconnect when it returns.
async fn start_api_side(
    args: &ApiArgs,
    store: &Store,
    identity: &IdentityArgs,
    node_name: &str,
    trigger: &Trigger,
    metrics: &Metrics,
) -> Option<ApiSide> {
    let client = match args.client(store).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "no API server configuration; running on the node view alone"
            );
            return None;
        }
    };
    Some(ApiSide {
        pods: PodWatch::spawn(
            &client,
            node_name,
            &identity.namespaces,
            trigger.clone(),
            metrics.clone(),
        ),
        objects: ObjectWatches::new(client.clone(), trigger.clone(), metrics.clone()),
        tokens: Tokens::default(),
        events: Events::new(client.clone(), node_name),
        uninstall: identity
            .own_pod()
            .map(|(ns, name)| OwnerWatch::spawn(client.clone(), ns, name, trigger.clone())),
        client,
    })
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
    /// Passes in a row that acted; past `MAX_QUICK_PASSES` the loop waits as usual.
    quick: u32,
}

impl Passes {
    fn new(reconciler: Reconciler, health: Arc<Health>, trigger: Trigger) -> Self {
        Self {
            reconciler,
            health,
            trigger,
            quick: 0,
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
    ) -> anyhow::Result<()> {
        loop {
            let pass = self.pass().await;
            let wait = self.pace(&pass).unwrap_or_else(|| until_due(&pass));
            tokio::select! {
                _ = stop_requested.cancelled() => return Ok(()),
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
