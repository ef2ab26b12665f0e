//! The reconcile loop: passes back to back while they act, else when a watch or the poller
//! triggers one or the next is due; the uninstall drain; and the hand-over after a persistent
//! 401.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Tasks;
use crate::admin::Health;
use crate::metrics::Metrics;
use crate::reconciler::{ApiSide, Pass, Reconciler};
use crate::watch::{Events, Trigger};

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
/// How long `Events` still being sent may delay the exit (issue 11.7): an uninstall's Events are
/// sent in the background and would otherwise die with the process.
const EVENTS_FLUSH: Duration = Duration::from_secs(3);

/// The reconcile loop: passes back to back while they act, otherwise when triggered (a watch or
/// the poller saw a change) or when the next one is due.
pub(super) struct Passes {
    reconciler: Reconciler,
    health: Arc<Health>,
    trigger: Trigger,
    metrics: Metrics,
    /// Passes in a row that acted; past `MAX_QUICK_PASSES` the loop waits as usual.
    quick: u32,
    /// The API side while it is being built.
    pub(super) api: Option<tokio::sync::oneshot::Receiver<ApiSide>>,
    /// The Events publisher of the API side, to flush at exit.
    events: Option<Events>,
    /// How long the API server has been refusing this copy's credentials.
    pub(super) unauthorized: Unauthorized,
}

/// Why [`Passes::until`] returned.
pub(super) enum Until {
    Stop,
    HandOver,
}

impl Passes {
    pub(super) fn new(
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
    pub(super) async fn flush_events(&self) {
        if let Some(events) = &self.events {
            events.flush(EVENTS_FLUSH).await;
        }
    }

    /// Passes until a stop is requested. A pass always runs to completion: stopping between
    /// passes never leaves a write half done. Watches over the agent's tasks meanwhile (issue
    /// 11.5): a poller that ends is restarted (its view unknown meanwhile); an admin server that
    /// ends is an error at once, not at shutdown, since without it nothing probes or scrapes this
    /// copy: the agent stops, the lock goes to the other copy and the kubelet restarts this one.
    pub(super) async fn until(
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
    pub(super) async fn drain(&mut self) {
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
pub(super) struct Unauthorized {
    /// `api_errors_total{resource="pods",reason="unauthorized"}` at the last look.
    seen: u64,
    /// The first 401 of the current run of them.
    since: Option<Instant>,
    /// The last new 401.
    last: Option<Instant>,
    /// How long a run of 401s may last before the lock is handed over.
    pub(super) after: Duration,
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
