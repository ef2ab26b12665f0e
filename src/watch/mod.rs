//! The API server side of the shell: a reflector on the pods bound to this node, per-object
//! watches on the Secrets and ConfigMaps those pods reference, TokenRequests for projected
//! service-account tokens, and Events on parents. Nothing here decides anything: it keeps
//! in-memory views current and pokes the reconciler when they change.
//!
//! One service a file: [`PodWatch`] (`pods`), [`ObjectWatches`] (`objects`), [`Tokens`]
//! (`tokens`), [`Events`] (`events`) and [`OwnerWatch`] (`owner`); what they share (the trigger,
//! error labels, reconnect backoff) lives here.

mod events;
mod objects;
mod owner;
mod pods;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::watcher;
use tokio::sync::Notify;

pub use events::Events;
pub use objects::{KeyDataSource, ObjectKind, ObjectRef, ObjectState, ObjectWatches};
pub use owner::OwnerWatch;
/// The rule lives in the core; re-exported for callers of the old path.
pub use pod_checkpointer_core::plan::owned_by_daemonset;
pub use pods::{FIRST_ANSWER, PodWatch};
pub use tokens::Tokens;

/// How long each watch call of the pod and owner watches lasts (the server ends it; the watcher
/// starts the next from its resourceVersion, without a relist). kube's watcher calls a
/// connection dead after this plus 5 s without an event, so an API connection dropped without a
/// FIN or RST (a node or load balancer gone) is noticed within a minute, well under kube's
/// default of 295 s and the API-unreachable alert's `for:` (issue 12.7).
pub const WATCH_TIMEOUT_SECS: u32 = 55;

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

/// [`error_reason`] for a watch stream's error, which wraps the request's or carries a status.
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
