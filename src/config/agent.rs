//! The node agent's flags, one group per part of the agent. Each group builds its own part, so
//! the wiring in [`crate::agent`] never reads a flag itself and a flag lives next to the code
//! that turns it into something.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{
    PathArgs, parse_long_duration, parse_namespace, parse_path, parse_poll_interval, parse_text,
};
use crate::admin;
use crate::cri::CriClient;
use crate::kubelet::{KubeletClient, KubeletConfig};
use crate::model::PodKey;
use crate::store::{StateFile, Store};
use crate::telemetry::{self, LogFormat};

/// How long one question to the runtime or the kubelet may take: a hung socket must not stall
/// the poller past a few intervals.
const NODE_SOURCE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a TCP and TLS connect to the API server may take.
const API_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of the node agent.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub identity: IdentityArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub cri: CriArgs,
    #[command(flatten)]
    pub kubelet: KubeletArgs,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub lock: LockArgs,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Who this agent is and which pods it looks after: the DaemonSet sets these from the
/// downward API, so each also reads its environment variable.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Identity")]
pub struct IdentityArgs {
    /// Name of this node; only pods bound here are checkpointed.
    #[arg(long, env = "NODE_NAME", allow_hyphen_values = true, value_parser = parse_text)]
    pub node_name: Option<String>,
    /// This agent's own pod name (downward API), so it can checkpoint itself.
    #[arg(long, env = "POD_NAME", allow_hyphen_values = true, value_parser = parse_text)]
    pub pod_name: Option<String>,
    /// This agent's own namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", allow_hyphen_values = true, value_parser = parse_text)]
    pub pod_namespace: Option<String>,
    /// Only checkpoint pods in these namespaces (comma-separated, or the flag repeated).
    /// Required unless --all-namespaces; an empty name is refused, never read as "all".
    // Empty after parsing means --all-namespaces: the rest of the agent reads it that way.
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_parser = parse_namespace
    )]
    pub namespaces: Vec<String>,
    /// Checkpoint pods in every namespace (needs cluster-wide RBAC). The explicit alternative
    /// to --namespaces, so that a missing or empty list never widens the agent to the cluster.
    #[arg(
        long,
        env = "ALL_NAMESPACES",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub all_namespaces: bool,
    /// When the agent leaves the node (its DaemonSet deleted, or its pod gone for good), keep
    /// the checkpoints whose copy runs: a copy may be all that runs a control-plane pod. Set
    /// to false to remove them too, once their parents run elsewhere.
    #[arg(
        long,
        env = "KEEP_ACTIVE_ON_UNINSTALL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub keep_active_on_uninstall: bool,
}

impl IdentityArgs {
    /// Which namespaces: `--namespaces` or `--all-namespaces`, exactly one of them. Checked after
    /// parsing (by [`super::Cli`], for the agent only), because `ALL_NAMESPACES=false` counts as
    /// "given" to clap but must not stand in for a namespace list.
    pub fn check(&self) -> Result<(), clap::Error> {
        use clap::error::ErrorKind;
        match (self.all_namespaces, self.namespaces.is_empty()) {
            (true, false) => Err(clap::Error::raw(
                ErrorKind::ArgumentConflict,
                format!(
                    "--namespaces ({}) and --all-namespaces (or ALL_NAMESPACES) cannot be used together: pick one\n",
                    self.namespaces.join(",")
                ),
            )),
            (false, true) => Err(clap::Error::raw(
                ErrorKind::MissingRequiredArgument,
                "no namespace to work in: pass --namespaces NS[,NS...] for an allow-list, or --all-namespaces (ALL_NAMESPACES=true) for every namespace\n",
            )),
            _ => Ok(()),
        }
    }

    /// The node name is optional to clap only so that the subcommands do not need it; the agent
    /// cannot pick its pods without it.
    pub fn node_name(&self) -> anyhow::Result<String> {
        self.node_name
            .clone()
            .filter(|n| !n.is_empty())
            .context("--node-name (or NODE_NAME) is required")
    }

    /// This agent's own pod as (namespace, name), when the downward API told us both. Without
    /// it the agent neither checkpoints itself nor notices its own uninstall.
    pub fn own_pod(&self) -> Option<(&str, &str)> {
        match (self.pod_namespace.as_deref(), self.pod_name.as_deref()) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
            _ => None,
        }
    }

    /// The parent this agent's own pod is a copy of, so its checkpoint is kept like any other
    /// and the agent comes back by itself after a reboot with the API server down.
    pub fn me(&self, node_name: &str) -> Option<PodKey> {
        self.own_pod()
            .map(|(ns, name)| PodKey::own_parent(ns, name, node_name))
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "API server")]
pub struct ApiArgs {
    /// Kubeconfig to reach the API server; the in-cluster service account when absent.
    #[arg(long, env = "KUBECONFIG", allow_hyphen_values = true, value_parser = parse_path)]
    pub kubeconfig: Option<PathBuf>,
    /// How long the API server may refuse this copy's credentials (401 on every watch, e.g. the
    /// static copy's token expired during a long outage) before it releases the node lock to the
    /// other copy and stands by; more than zero and at most 8760h.
    #[arg(
        long,
        env = "API_UNAUTHORIZED_HANDOVER",
        default_value = "2m",
        allow_hyphen_values = true,
        value_parser = parse_long_duration
    )]
    pub api_unauthorized_handover: Duration,
}

/// The two API clients the agent uses, over one configuration.
#[derive(Clone)]
pub struct ApiClients {
    /// For watches: no read timeout (a quiet watch reads nothing for up to its own timeout,
    /// which bounds it instead: `watch::WATCH_TIMEOUT_SECS`).
    pub watch: kube::Client,
    /// For single requests (TokenRequests, Events): every response within
    /// [`API_REQUEST_TIMEOUT`], so a pass waiting on a browned-out API server is bounded.
    pub request: kube::Client,
}

/// How long a single API request (not a watch) may wait for its response.
const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiArgs {
    /// A client from `--kubeconfig`, or the in-cluster service account. Neither talks to the API
    /// server here, so a dead API server does not stop the agent from starting.
    ///
    /// The kubelet gives a container `KUBERNETES_SERVICE_HOST` only once it has listed Services,
    /// so the static copy of the agent started after a reboot with the API server down has none.
    /// The DaemonSet pod therefore records the address it was given in the state directory, and
    /// a copy started without one uses that.
    pub async fn client(&self, store: &Store) -> anyhow::Result<ApiClients> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .context("loading kubeconfig")?
            }
            None => in_cluster(store)?,
        };
        let mut config = config;
        // A connection attempt to a dead API server fails in seconds, not kube's 30 s: a watch
        // retrying through an outage keeps its 5 s backoff meaningful.
        config.connect_timeout = Some(API_CONNECT_TIMEOUT);
        let mut request = config.clone();
        request.read_timeout = Some(API_REQUEST_TIMEOUT);
        request.write_timeout = Some(API_REQUEST_TIMEOUT);
        request.reset_reader_on_write = true;
        Ok(ApiClients {
            watch: kube::Client::try_from(config).context("building the API client")?,
            request: kube::Client::try_from(request).context("building the API client")?,
        })
    }
}

/// The in-cluster configuration, remembering its API address for a later copy that is started
/// without one (see [`ApiArgs::client`]).
fn in_cluster(store: &Store) -> anyhow::Result<kube::Config> {
    match kube::Config::incluster_env() {
        Ok(config) => {
            let url = config.cluster_url.to_string();
            if let Err(e) = store.write_state(StateFile::ApiAddress, &url) {
                tracing::warn!(error = %e, "could not remember the API server address");
            }
            Ok(config)
        }
        Err(env_err) => {
            let url = store
                .read_state(StateFile::ApiAddress)
                .context("reading the remembered API address")?
                .with_context(|| {
                    format!("in-cluster configuration: {env_err}; and no remembered API address")
                })?;
            let mut config = kube::Config::incluster_dns().context("in-cluster configuration")?;
            config.cluster_url = url
                .trim()
                .parse()
                .context("remembered API server address")?;
            tracing::info!(url = %config.cluster_url, "no KUBERNETES_SERVICE_HOST (started before the kubelet listed Services); using the remembered API address");
            Ok(config)
        }
    }
}

/// The container runtime, asked what really runs on the node.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Container runtime")]
pub struct CriArgs {
    /// CRI endpoint of the container runtime, the truth about what runs. Empty disables it (the
    /// kubelet's pod status is used instead).
    #[arg(
        long,
        default_value = "unix:///run/containerd/containerd.sock",
        allow_hyphen_values = true,
        value_parser = parse_text
    )]
    pub cri_endpoint: String,
}

impl CriArgs {
    /// `None` when the endpoint is empty: a node whose runtime is not reachable from the agent
    /// can still run it on the kubelet's view.
    pub fn client(&self) -> anyhow::Result<Option<CriClient>> {
        match self.cri_endpoint.trim() {
            "" => Ok(None),
            ep => CriClient::new(ep, NODE_SOURCE_TIMEOUT)
                .map(Some)
                .context("CRI endpoint"),
        }
    }
}

/// The kubelet, asked which parents it runs while the API server is down.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Kubelet")]
pub struct KubeletArgs {
    /// Kubelet base URL (e.g. https://127.0.0.1:10250, or http://127.0.0.1:10255 for the
    /// read-only port) for its /pods: parents known while the API server is down.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_text)]
    pub kubelet_url: Option<String>,
    /// Bearer token file for the kubelet (re-read on every request, so rotation works).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub kubelet_token_file: Option<PathBuf>,
    /// CA bundle that signed the kubelet's serving certificate.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub kubelet_ca_file: Option<PathBuf>,
    /// Client certificate for the kubelet.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub kubelet_client_cert: Option<PathBuf>,
    /// Client key for the kubelet.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub kubelet_client_key: Option<PathBuf>,
    /// Skip verifying the kubelet's serving certificate (self-signed kubelet certs).
    #[arg(long)]
    pub kubelet_insecure_skip_tls_verify: bool,
}

impl KubeletArgs {
    /// `None` without `--kubelet-url`: the kubelet is optional when the runtime answers.
    pub fn client(&self) -> anyhow::Result<Option<KubeletClient>> {
        let Some(url) = &self.kubelet_url else {
            return Ok(None);
        };
        KubeletClient::new(&KubeletConfig {
            url: url.clone(),
            token_file: self.kubelet_token_file.clone(),
            client_cert: self.kubelet_client_cert.clone(),
            client_key: self.kubelet_client_key.clone(),
            ca_file: self.kubelet_ca_file.clone(),
            insecure_skip_tls_verify: self.kubelet_insecure_skip_tls_verify,
            timeout: NODE_SOURCE_TIMEOUT,
        })
        .map(Some)
        .context("kubelet client")
    }
}

/// How fast the agent looks and how patient it is.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Timing")]
pub struct TimingArgs {
    /// How often the runtime and the kubelet are asked what runs (e.g. 1s, 500ms); more than
    /// zero and at most 1h.
    #[arg(
        long,
        default_value = "1s",
        allow_hyphen_values = true,
        value_parser = parse_poll_interval
    )]
    pub poll_interval: Duration,
    /// How long the API server must stop listing a parent before its checkpoint is removed;
    /// more than zero and at most 8760h (a year).
    #[arg(
        long,
        default_value = "1m",
        allow_hyphen_values = true,
        value_parser = parse_long_duration
    )]
    pub grace_period: Duration,
    /// How long a successor pod that made its predecessor's checkpoint yield has to become
    /// Ready on this node before that checkpoint runs again (last known good).
    ///
    /// A successor (same controller) that starts here makes the predecessor's checkpoint stand
    /// down so it can take the ports. If it is not Ready (as the kubelet reports it) within this
    /// time, the predecessor's copy is activated again, so a bad update of a single self-hosted
    /// API server still leaves an API to roll it back through. OpenShift's static-pod operators
    /// fall back after 300s for the same reason. More than zero and at most 8760h (a year).
    #[arg(
        long,
        env = "FALLBACK_TIMEOUT",
        default_value = "5m",
        allow_hyphen_values = true,
        value_parser = parse_long_duration
    )]
    pub fallback_timeout: Duration,
}

impl TimingArgs {
    /// How long the main loop may stay silent before `/healthz` fails: it beats at least once
    /// per poll interval, so several intervals, and never so little that a slow pass restarts
    /// the pod.
    pub fn stall_after(&self) -> Duration {
        (self.poll_interval.saturating_mul(10)).max(Duration::from_secs(30))
    }
}

/// The admin server operators scrape and the exec probe asks. Bound only by the copy holding the
/// node lock.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Admin server")]
pub struct AdminArgs {
    /// Address of the admin server (/metrics, /healthz, /readyz). `[::]` listens on every IPv6
    /// and IPv4 address (dual-stack; IPv4 only where IPv6 is off); `127.0.0.1:PORT` keeps
    /// /metrics on loopback for a proxy in front (the exec probes still reach it). Bound only
    /// while this copy holds the node lock.
    // Port 10266: not 9808, the CSI livenessprobe's default (issue 12.5); outside the Prometheus
    // exporters' range 9100-9999 (all allocated) and the Kubernetes components' 10248-10260
    // (kubelet, kube-proxy, controller managers, scheduler; ingress-nginx uses 10254); not in the
    // IANA registry, and below the Linux ephemeral range.
    #[arg(long, default_value = "[::]:10266", allow_hyphen_values = true)]
    pub admin_addr: SocketAddr,
}

impl AdminArgs {
    /// The admin listener on `--admin-addr`; a port held by another program is an error.
    pub async fn bind(&self) -> std::io::Result<tokio::net::TcpListener> {
        admin::bind(self.admin_addr).await
    }
}

/// What the logs look like.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json, allow_hyphen_values = true)]
    pub log_format: LogFormat,
    /// Log level or filter (RUST_LOG wins when set).
    #[arg(long, default_value = "info", allow_hyphen_values = true, value_parser = parse_text)]
    pub log_level: String,
}

impl LogArgs {
    /// Installs the global subscriber; before the runtime starts, so its own logs are kept.
    pub fn init(&self) -> anyhow::Result<()> {
        telemetry::init(self.log_format, &self.log_level)
    }
}

/// The lock that lets one copy of the agent work at a time.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Node lock")]
pub struct LockArgs {
    /// Lock file that lets only one copy of the agent (DaemonSet pod or static copy) work.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub lock_file: Option<PathBuf>,
}

impl LockArgs {
    /// The lock file path, defaulting under `--root` like every other node path.
    pub fn path(&self, paths: &PathArgs) -> PathBuf {
        self.lock_file
            .clone()
            .unwrap_or_else(|| paths.rooted("/var/run/lock/pod-checkpointer.lock"))
    }
}
