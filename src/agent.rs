//! Wiring of the node agent: flags to parts, the lock, the admin server, the watches, the node
//! poller and the reconcile loop, and a clean stop on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin::Health;
use crate::config::AgentArgs;
use crate::lock::InstanceLock;
use crate::metrics::Metrics;
use crate::poller::{self, NodeSources, NodeView};
use crate::reconciler::{ApiSide, Reconciler, Settings};
use crate::store::Store;
use crate::watch::{Events, ObjectWatches, OwnerWatch, PodWatch, Tokens, Trigger};

/// Local state is looked at this often even when nothing changes (repairs, deadlines).
const RESYNC: Duration = Duration::from_secs(10);
/// Passes run back to back while each one changes something, at most this many in a row.
const MAX_QUICK_PASSES: u32 = 5;
/// How long a SIGTERM during uninstall waits for the node to be clean (the chart gives 30s).
const DRAIN: Duration = Duration::from_secs(20);

/// Runs the agent until SIGTERM or SIGINT. Returns an error only for bad configuration; an
/// unreachable API server or runtime is a state to live with, not a reason to exit.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = args.identity.node_name()?;
    let sources = node_sources(&args)?;
    let metrics = Metrics::new().context("registering metrics")?;
    let health = Health::new(args.timing.stall_after());
    let shutdown = CancellationToken::new();
    let trigger: Trigger = Arc::new(Notify::new());

    let admin = tokio::spawn(
        args.admin
            .server(metrics.clone(), health.clone(), shutdown.clone()),
    );
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Only one copy works: the DaemonSet pod or its static copy, whichever holds the lock.
    let lock_path = args.lock.path(&args.paths);
    let mut waiting_logged = false;
    let _lock = loop {
        match InstanceLock::try_acquire(&lock_path)
            .with_context(|| format!("opening lock file {}", lock_path.display()))?
        {
            Some(lock) => break lock,
            None => {
                if !waiting_logged {
                    tracing::info!(lock = %lock_path.display(), action = "standby", "another copy of the agent holds the node lock; standing by");
                    waiting_logged = true;
                }
                health.beat();
                health.set_ready();
                tokio::select! {
                    _ = term.recv() => return stop(shutdown, admin).await,
                    _ = int.recv() => return stop(shutdown, admin).await,
                    _ = tokio::time::sleep(args.timing.poll_interval) => {}
                }
            }
        }
    };
    metrics.lock_held.set(1);
    tracing::info!(lock = %lock_path.display(), node = %node_name, "holding the node lock");

    let store = Store::new(args.paths.layout());
    let leftovers = store
        .prepare()
        .context("preparing checkpoint directories")?;
    if leftovers > 0 {
        tracing::info!(
            count = leftovers,
            "removed temporary files left by an interrupted write"
        );
    }

    let me = args.identity.me(&node_name);
    if me.is_none() {
        tracing::warn!("POD_NAME/POD_NAMESPACE not set: the agent will not checkpoint itself");
    }
    let api = match args.api.client(&store).await {
        Ok(client) => Some(ApiSide {
            pods: PodWatch::spawn(
                &client,
                &node_name,
                &args.identity.namespaces,
                trigger.clone(),
                metrics.clone(),
            ),
            objects: ObjectWatches::new(client.clone(), trigger.clone(), metrics.clone()),
            tokens: Tokens::default(),
            events: Events::new(client.clone(), &node_name),
            uninstall: args
                .identity
                .own_pod()
                .map(|(ns, name)| OwnerWatch::spawn(client.clone(), ns, name, trigger.clone())),
            client,
        }),
        Err(e) => {
            tracing::error!(
                error = format!("{e:#}"),
                "no API server configuration; running on the node view alone"
            );
            None
        }
    };

    let node_view = Arc::new(Mutex::new(NodeView::default()));
    let runtime = sources.cri.clone();
    let poll = tokio::spawn(poller::run(
        sources,
        args.timing.poll_interval,
        node_view.clone(),
        trigger.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let settings = Settings {
        node_name,
        me,
        grace: args.timing.grace_period,
        namespaces: args.identity.namespaces.clone(),
    };
    let mut reconciler = Reconciler::new(settings, store, metrics, node_view, runtime, api);
    // Set by SIGTERM while uninstalling: finish cleaning the node, within the pod's grace period.
    let mut draining_until: Option<tokio::time::Instant> = None;
    let mut quick_passes = 0;
    loop {
        let pass = reconciler.reconcile().await;
        health.beat();
        if reconciler.synced_once() {
            health.set_ready();
        }
        if let Some(until) = draining_until
            && (pass.checkpoints_on_disk == 0 || tokio::time::Instant::now() >= until)
        {
            break;
        }
        // A step done (say, another checkpoint removed) may make the next one possible now.
        quick_passes = if pass.acted { quick_passes + 1 } else { 0 };
        let wait = if pass.acted && quick_passes <= MAX_QUICK_PASSES {
            Duration::ZERO
        } else if draining_until.is_some() {
            Duration::from_millis(200)
        } else {
            pass.wake_at
                .and_then(|at| Duration::try_from(at.duration_since(jiff::Timestamp::now())).ok())
                .map_or(RESYNC, |d| d.min(RESYNC))
        };
        // The pass above ran to completion: stopping here never leaves a write half done.
        let stop = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => true,
            _ = trigger.notified() => false,
            _ = tokio::time::sleep(wait) => false,
        };
        if stop {
            if !reconciler.uninstalling() {
                break;
            }
            tracing::info!(action = "uninstall", "stopping after the node is clean");
            draining_until = Some(tokio::time::Instant::now() + DRAIN);
        }
    }
    poll.abort();
    stop(shutdown, admin).await
}

async fn stop(
    shutdown: CancellationToken,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    tracing::info!(
        action = "shutdown",
        "stopping; checkpoints stay as they are"
    );
    shutdown.cancel();
    match admin.await {
        Ok(Err(e)) => Err(e).context("admin server"),
        _ => Ok(()),
    }
}

fn node_sources(args: &AgentArgs) -> anyhow::Result<NodeSources> {
    let cri = args.cri.client()?;
    let kubelet = args.kubelet.client()?;
    if cri.is_none() && kubelet.is_none() {
        bail!("set --cri-endpoint or --kubelet-url: the agent needs to know what runs on the node");
    }
    Ok(NodeSources { cri, kubelet })
}
