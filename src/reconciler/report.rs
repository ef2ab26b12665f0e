//! What a pass reports: each state change once in the log, as Events on the parent, and in the
//! metrics; lasting failures when they start, change and end, not on every pass.

use std::collections::{BTreeMap, BTreeSet};
use std::time::UNIX_EPOCH;

use super::{ActionError, Reconciler};
use crate::decide::Action;
use crate::model::{Observation, PodKey};
use crate::sanitize::Refusal;

impl Reconciler {
    /// Counts a failed action, and logs a failure when it starts, changes or ends: a lasting
    /// one (a full disk) is retried every pass but logged once.
    pub(super) fn report_outcome(&mut self, action: &Action, result: &Result<(), ActionError>) {
        let key = action.key();
        let (ns, pod, name) = (&key.namespace, &key.name, action.name());
        let attempt = (key.clone(), name);
        match result {
            Ok(()) => {
                if self.failing.remove(&attempt).is_some() {
                    tracing::info!(namespace = %ns, pod = %pod, action = name, "checkpoint operation works again");
                }
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                if self.failing.insert(attempt, e.reason) != Some(e.reason) {
                    tracing::error!(namespace = %ns, pod = %pod, action = name, reason = e.reason, error = %e.message, "checkpoint operation failed; retrying every pass, logging again only when this changes");
                } else {
                    tracing::debug!(namespace = %ns, pod = %pod, action = name, reason = e.reason, error = %e.message, "checkpoint operation still failing");
                }
            }
        }
    }

    /// Says once, in the log and as an Event, which checkpoints stay although the agent leaves
    /// the node: a person must remove them once their parents run again.
    pub(super) fn report_kept(&mut self, kept: &[PodKey]) {
        for key in kept {
            if self.kept.insert(key.clone()) {
                tracing::warn!(namespace = %key.namespace, pod = %key.name, action = "keep", "the agent leaves this node, but this checkpoint's copy runs and may be all that runs its parent: it stays (remove it by hand once the parent runs, or run with --keep-active-on-uninstall=false)");
                self.event(key, "CheckpointKept", "Keep", "The checkpointer leaves this node; this checkpoint's copy runs and was kept. Remove it from the static pod directory by hand once the pod runs again.");
            }
        }
    }

    pub(super) fn event(&self, key: &PodKey, reason: &str, action: &str, note: &str) {
        if let (Some(api), Some(pod)) = (&self.api, self.remembered.get(key))
            && api.pods.is_reachable()
        {
            api.events.publish(pod, reason, action, note.to_string());
        }
    }

    /// Logs refusals when they change and exports their count by reason.
    pub(super) fn report_refusals(&mut self, now: BTreeMap<PodKey, Refusal>) {
        for (key, why) in &now {
            if self.refused.get(key) != Some(why) {
                tracing::warn!(namespace = %key.namespace, pod = %key.name, action = "refuse", reason = why.reason(), error = %why, "pod cannot be checkpointed");
                if let (Some(api), Some(pod)) = (&self.api, self.remembered.get(key)) {
                    let note = format!("The pod cannot be checkpointed: {why}.");
                    api.events.warn(pod, "CheckpointRefused", "Refuse", note);
                }
            }
        }
        // New values first, then only the series that are gone: a scrape during the pass never
        // sees a series missing that is still there (a `for:` alert would start over).
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for why in now.values() {
            *counts.entry(why.reason()).or_default() += 1;
        }
        for (reason, count) in &counts {
            self.metrics
                .refused_pods
                .with_label_values(&[reason])
                .set(*count);
        }
        for why in self.refused.values() {
            if !counts.contains_key(why.reason()) {
                // Already removed when several pods had this reason.
                let _ = self
                    .metrics
                    .refused_pods
                    .remove_label_values(&[why.reason()]);
            }
        }
        self.refused = now;
    }

    /// Exports checkpoint counts by state from a fresh look at the disk. When the disk cannot be
    /// read, the last values stay: unknown is not "none active".
    pub(super) fn report_states(&mut self, running: &Observation<BTreeSet<PodKey>>) {
        let Some(disk) = self.scan() else {
            return;
        };
        // The self-check: the agent's own checkpoint is always active, so the runtime should
        // run its static copy; when it does not, nothing in this directory would ever run.
        if let (Some(me), Observation::Known(running)) = (&self.settings.me, running)
            && disk.checkpoints.get(me).is_some_and(|d| d.active.is_some())
        {
            let copy = me.static_pod_key(&self.settings.node_name);
            self.metrics
                .own_copy_running
                .with_label_values(&[&copy.name])
                .set(i64::from(running.contains(&copy)));
        }
        let (mut inactive, mut active, mut grace) = (0, 0, 0);
        let mut series = BTreeSet::new();
        for (key, d) in &disk.checkpoints {
            if Some(key) == self.settings.me.as_ref() {
                continue;
            }
            if self.deadlines.contains_key(key) {
                grace += 1;
            }
            match &d.active {
                Some(_) => {
                    active += 1;
                    let since = d
                        .active_since
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                    if let Some(secs) = since.map(|d| d.as_secs_f64()) {
                        self.metrics
                            .activated_timestamp
                            .with_label_values(&[&key.namespace, &key.name])
                            .set(secs);
                        series.insert(key.clone());
                    }
                }
                None => inactive += 1,
            }
        }
        let m = &self.metrics.checkpoints;
        m.with_label_values(&["inactive"]).set(inactive);
        m.with_label_values(&["active"]).set(active);
        m.with_label_values(&["grace"]).set(grace);
        // Set first, then remove only the series that are gone (see `report_refusals`).
        for gone in self.activated_series.difference(&series) {
            let _ = self
                .metrics
                .activated_timestamp
                .remove_label_values(&[&gone.namespace, &gone.name]);
        }
        self.activated_series = series;
    }
}
