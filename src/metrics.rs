//! The agent's Prometheus metrics (SPEC §6): one registry, created once and shared.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

const NS: &str = "pod_checkpointer";

/// Every metric the agent exports. Names follow Prometheus conventions (base units, `_total`).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Checkpoints on this node by state (`inactive`, `active`, `grace`), the agent's own excluded.
    pub checkpoints: IntGaugeVec,
    /// When each active checkpoint was activated, so alerts can tell how long a node runs on copies.
    pub activated_timestamp: GaugeVec,
    /// Checkpoints put in the static pod directory: each one means a parent was down.
    pub activations: IntCounter,
    /// Predecessor copies run again because their successor was not Ready in time (SPEC §4
    /// "Fallback"): each one is a failed update of a self-hosted component worth a look.
    pub fallbacks: IntCounter,
    /// Checkpoints taken out of it, by reason (`parent_running`, `removal`).
    pub deactivations: IntCounterVec,
    /// Checkpoints deleted with their files, so operators can see clean-ups happen.
    pub removals: IntCounter,
    /// 1 while the pod watch is connected and synced.
    pub api_reachable: IntGauge,
    /// Failed CRI polls: while they fail, nothing is activated (SPEC §5).
    pub runtime_poll_errors: IntCounter,
    /// Failed kubelet `/pods` polls.
    pub kubelet_poll_errors: IntCounter,
    /// How long a reconcile pass takes, to see the node side stays fast.
    pub reconcile_duration: Histogram,
    /// Last time each source (`api`, `runtime`, `kubelet`) answered.
    pub last_sync: GaugeVec,
    /// Pods that cannot be checkpointed right now, by reason.
    pub refused_pods: IntGaugeVec,
    /// Failed API requests by resource and reason (`forbidden` names a missing RBAC rule).
    pub api_errors: IntCounterVec,
    /// Checkpoint file operations that failed (a full disk, a refused file).
    pub write_errors: IntCounter,
    /// 1 in the copy of the agent that holds the node lock and works; 0 in the one that waits.
    pub lock_held: IntGauge,
    /// 0 while the checkpoint directories cannot be read: the agent then acts on nothing that
    /// depends on them, and the `checkpoints` gauges hold their last values.
    pub disk_readable: IntGauge,
    /// 1 while the runtime runs the agent's own static copy, 0 while its checkpoint is active
    /// but nothing runs it: then the manifest directory is not where this kubelet runs static
    /// pods, and no checkpoint would come back after a reboot. Only set while the agent
    /// checkpoints itself.
    pub own_copy_running: IntGaugeVec,
    build_info: GaugeVec,
}

impl Metrics {
    /// Registers every metric; fails only on a programming error (a duplicate name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NS);
        let m = Self {
            checkpoints: IntGaugeVec::new(
                opts(
                    "checkpoints",
                    "Checkpoints on this node by state, excluding the agent's own.",
                ),
                &["state"],
            )?,
            activated_timestamp: GaugeVec::new(
                opts(
                    "checkpoint_activated_timestamp_seconds",
                    "Unix time at which each active checkpoint was activated.",
                ),
                &["namespace", "pod"],
            )?,
            activations: IntCounter::with_opts(opts(
                "activations_total",
                "Checkpoints put in the static pod directory.",
            ))?,
            fallbacks: IntCounter::with_opts(opts(
                "fallbacks_total",
                "Checkpoints activated again because the successor that replaced their parent was not Ready within the fallback timeout.",
            ))?,
            deactivations: IntCounterVec::new(
                opts(
                    "deactivations_total",
                    "Checkpoints taken out of the static pod directory, by reason.",
                ),
                &["reason"],
            )?,
            removals: IntCounter::with_opts(opts(
                "removals_total",
                "Checkpoints deleted with their files.",
            ))?,
            api_reachable: IntGauge::with_opts(opts(
                "api_reachable",
                "1 while the API server watch is connected and synced, else 0.",
            ))?,
            runtime_poll_errors: IntCounter::with_opts(opts(
                "runtime_poll_errors_total",
                "Container runtime (CRI) polls that failed.",
            ))?,
            kubelet_poll_errors: IntCounter::with_opts(opts(
                "kubelet_poll_errors_total",
                "Kubelet /pods polls that failed.",
            ))?,
            reconcile_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "reconcile_duration_seconds",
                    "Time taken by one reconcile pass.",
                )
                .namespace(NS)
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            )?,
            last_sync: GaugeVec::new(
                opts(
                    "last_sync_timestamp_seconds",
                    "Unix time of the last successful answer from each source.",
                ),
                &["source"],
            )?,
            refused_pods: IntGaugeVec::new(
                opts(
                    "refused_pods",
                    "Parents that cannot be checkpointed right now, by reason.",
                ),
                &["reason"],
            )?,
            api_errors: IntCounterVec::new(
                opts("api_errors_total", "Failed API server requests."),
                &["resource", "reason"],
            )?,
            write_errors: IntCounter::with_opts(opts(
                "write_errors_total",
                "Checkpoint file operations that failed.",
            ))?,
            lock_held: IntGauge::with_opts(opts(
                "lock_held",
                "1 when this process holds the node lock and does the work.",
            ))?,
            disk_readable: IntGauge::with_opts(opts(
                "disk_readable",
                "0 while the checkpoint directories cannot be read (checkpoint gauges then hold their last values), else 1.",
            ))?,
            own_copy_running: IntGaugeVec::new(
                opts(
                    "own_copy_running",
                    "1 while the kubelet runs the agent's own static copy (its checkpoint is active); 0 when it does not run it.",
                ),
                &["pod"],
            )?,
            build_info: GaugeVec::new(
                opts("build_info", "Build information; always 1."),
                &["version"],
            )?,
            registry,
        };
        m.register_all()?;
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1.0);
        // Until a scan says otherwise: a copy standing by must not look like a broken disk.
        m.disk_readable.set(1);
        for state in ["inactive", "active", "grace"] {
            m.checkpoints.with_label_values(&[state]).set(0);
        }
        for reason in ["parent_running", "removal", "replaced"] {
            m.deactivations.with_label_values(&[reason]);
        }
        Ok(m)
    }

    fn register_all(&self) -> prometheus::Result<()> {
        let r = &self.registry;
        r.register(Box::new(self.checkpoints.clone()))?;
        r.register(Box::new(self.activated_timestamp.clone()))?;
        r.register(Box::new(self.activations.clone()))?;
        r.register(Box::new(self.fallbacks.clone()))?;
        r.register(Box::new(self.deactivations.clone()))?;
        r.register(Box::new(self.removals.clone()))?;
        r.register(Box::new(self.api_reachable.clone()))?;
        r.register(Box::new(self.runtime_poll_errors.clone()))?;
        r.register(Box::new(self.kubelet_poll_errors.clone()))?;
        r.register(Box::new(self.reconcile_duration.clone()))?;
        r.register(Box::new(self.last_sync.clone()))?;
        r.register(Box::new(self.refused_pods.clone()))?;
        r.register(Box::new(self.api_errors.clone()))?;
        r.register(Box::new(self.write_errors.clone()))?;
        r.register(Box::new(self.lock_held.clone()))?;
        r.register(Box::new(self.disk_readable.clone()))?;
        r.register(Box::new(self.own_copy_running.clone()))?;
        r.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    /// Counts one failed API request; `reason` comes from [`crate::watch::error_reason`], so
    /// `forbidden` points at a missing RBAC rule for `resource`.
    pub fn api_error(&self, resource: &str, reason: &str) {
        self.api_errors.with_label_values(&[resource, reason]).inc();
    }

    /// Records that a source answered now.
    pub fn synced(&self, source: &str) {
        let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
        self.last_sync.with_label_values(&[source]).set(now);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
