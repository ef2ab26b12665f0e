//! Wiring of the node agent: flags to parts, the lock, the admin server, the watches, the node
//! poller and the reconcile loop, and a clean stop on SIGTERM.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::config::AgentArgs;
use crate::cri::CriClient;
use crate::kubelet::{KubeletClient, KubeletConfig};
use crate::lock::InstanceLock;
use crate::metrics::Metrics;
use crate::model::PodKey;
use crate::poller::{self, NodeSources, NodeView};
use crate::reconciler::{ApiSide, Reconciler, Settings};
use crate::store::{StateFile, Store};
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
    let node_name = args
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
        .context("--node-name (or NODE_NAME) is required")?;
    let sources = node_sources(&args)?;
    let metrics = Metrics::new().context("registering metrics")?;
    let health = Health::new((args.poll_interval * 10).max(Duration::from_secs(30)));
    let shutdown = CancellationToken::new();
    let trigger: Trigger = Arc::new(Notify::new());

    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    // Only one copy works: the DaemonSet pod or its static copy, whichever holds the lock.
    let lock_path = args.lock_path();
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
                    _ = tokio::time::sleep(args.poll_interval) => {}
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

    let me = match (&args.pod_namespace, &args.pod_name) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some(PodKey::own_parent(ns, name, &node_name))
        }
        _ => {
            tracing::warn!("POD_NAME/POD_NAMESPACE not set: the agent will not checkpoint itself");
            None
        }
    };
    let api = match kube_client(&args, &store).await {
        Ok(client) => Some(ApiSide {
            pods: PodWatch::spawn(
                &client,
                &node_name,
                &args.namespaces,
                trigger.clone(),
                metrics.clone(),
            ),
            objects: ObjectWatches::new(client.clone(), trigger.clone(), metrics.clone()),
            tokens: Tokens::default(),
            events: Events::new(client.clone(), &node_name),
            uninstall: match (&args.pod_namespace, &args.pod_name) {
                (Some(ns), Some(name)) if me.is_some() => {
                    Some(OwnerWatch::spawn(client.clone(), ns, name, trigger.clone()))
                }
                _ => None,
            },
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
        args.poll_interval,
        node_view.clone(),
        trigger.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let settings = Settings {
        node_name,
        me,
        grace: args.grace_period,
        namespaces: args.namespaces.clone(),
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
    let cri = match args.cri_endpoint.trim() {
        "" => None,
        ep => Some(CriClient::new(ep, Duration::from_secs(2)).context("CRI endpoint")?),
    };
    let kubelet = match &args.kubelet_url {
        None => None,
        Some(url) => Some(
            KubeletClient::new(&KubeletConfig {
                url: url.clone(),
                token_file: args.kubelet_token_file.clone(),
                client_cert: args.kubelet_client_cert.clone(),
                client_key: args.kubelet_client_key.clone(),
                ca_file: args.kubelet_ca_file.clone(),
                insecure_skip_tls_verify: args.kubelet_insecure_skip_tls_verify,
                timeout: Duration::from_secs(2),
            })
            .context("kubelet client")?,
        ),
    };
    if cri.is_none() && kubelet.is_none() {
        bail!("set --cri-endpoint or --kubelet-url: the agent needs to know what runs on the node");
    }
    Ok(NodeSources { cri, kubelet })
}

/// A client from `--kubeconfig`, or the in-cluster service account. Neither talks to the API
/// server here, so a dead API server does not stop the agent from starting.
///
/// The kubelet gives a container `KUBERNETES_SERVICE_HOST` only once it has listed Services, so
/// the static copy of the agent started after a reboot with the API server down has none. The
/// DaemonSet pod therefore records the address it was given in the state directory, and a copy
/// started without one uses that.
async fn kube_client(args: &AgentArgs, store: &Store) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .context("loading kubeconfig")?
        }
        None => match kube::Config::incluster_env() {
            Ok(config) => {
                let url = config.cluster_url.to_string();
                if let Err(e) = store.write_state(StateFile::ApiAddress, &url) {
                    tracing::warn!(error = %e, "could not remember the API server address");
                }
                config
            }
            Err(env_err) => {
                let url = store
                    .read_state(StateFile::ApiAddress)
                    .context("reading the remembered API address")?
                    .with_context(|| {
                        format!(
                            "in-cluster configuration: {env_err}; and no remembered API address"
                        )
                    })?;
                let mut config =
                    kube::Config::incluster_dns().context("in-cluster configuration")?;
                config.cluster_url = url
                    .trim()
                    .parse()
                    .context("remembered API server address")?;
                tracing::info!(url = %config.cluster_url, "no KUBERNETES_SERVICE_HOST (started before the kubelet listed Services); using the remembered API address");
                config
            }
        },
    };
    kube::Client::try_from(config).context("building the API client")
}
