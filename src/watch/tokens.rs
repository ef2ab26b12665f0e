//! Service-account tokens for projected volumes, which only the API server can issue: obtained
//! ahead of time so a checkpoint carries a valid one when the API is gone.
//!
//! Requests run in the background, each with a deadline: a pass reads what is at hand and never
//! waits on the API, so a hung API server cannot hold up an activation (issue 10.5). A token is
//! kept per pod object (its uid), not per name: a parent recreated under the same name must not
//! keep a token bound to the object that was deleted (issue 10.10). How long a token lives is
//! read off what the server granted (its `iat` and `exp` claims) and counted on the monotonic
//! clock, so a local clock behind or ahead of the API server's neither lets a token expire
//! before it is refreshed nor refreshes it early (issue 11.4).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;

use super::{Trigger, error_reason};
use crate::metrics::Metrics;
use crate::model::{PodKey, Redacted};
use crate::sanitize::TokenSpec;

/// How long one TokenRequest may take before it counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// After a failure, the first retry waits this long, doubling up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Lifetime assumed when the server's answer does not say (it always does today).
const FALLBACK_LIFETIME: Duration = Duration::from_secs(600);

/// Which token: one parent object (name and uid) and one projected source.
type TokenKey = (PodKey, String, TokenSpec);

/// A token obtained for one parent and one projected source. `Debug` shows its size, never the
/// token: it is a credential.
#[derive(Clone)]
struct CachedToken {
    token: String,
    refresh_at: Instant,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &Redacted(self.token.as_bytes()))
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// A token that could not be had: when to try again, and what was logged about it.
#[derive(Clone, Debug)]
struct Failing {
    reason: &'static str,
    retry_at: Instant,
    backoff: Duration,
}

#[derive(Debug, Default)]
struct State {
    cache: BTreeMap<TokenKey, CachedToken>,
    in_flight: BTreeSet<TokenKey>,
    failing: BTreeMap<TokenKey, Failing>,
}

/// Service-account tokens for projected volumes, obtained through the TokenRequest API bound to
/// the parent pod and refreshed at 80% of their life while the API is up.
pub struct Tokens {
    state: Arc<Mutex<State>>,
    trigger: Trigger,
    deadline: Duration,
}

impl Tokens {
    /// `trigger` wakes the reconciler when a token arrives, so it reaches the checkpoint at once.
    pub fn new(trigger: Trigger) -> Self {
        Self::with_deadline(trigger, REQUEST_DEADLINE)
    }

    /// As [`Tokens::new`], with another deadline per request (tests use a short one).
    pub fn with_deadline(trigger: Trigger, deadline: Duration) -> Self {
        Self {
            state: Arc::default(),
            trigger,
            deadline,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts requests for the tokens `pod` needs that are missing or due for refresh, and
    /// returns at once. Failures keep the old token (it is still valid for a while), are logged
    /// once until they change, and are retried with back-off.
    ///
    /// `bind` ties each token to the pod, so it dies with it. The agent's own checkpoint is not
    /// bound: its static copy must still reach the API server after the DaemonSet pod is gone,
    /// to learn that it was replaced or removed (the token still dies with the ServiceAccount).
    pub fn refresh(
        &self,
        client: &Client,
        pod: &Pod,
        specs: &BTreeSet<TokenSpec>,
        bind: bool,
        metrics: &Metrics,
    ) {
        let key = PodKey::new(pod.namespace().unwrap_or_default(), pod.name_any());
        let uid = pod.uid().unwrap_or_default();
        let Some(sa) = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
        else {
            return;
        };
        let now = Instant::now();
        let mut state = self.state();
        for spec in specs {
            let tk = (key.clone(), uid.clone(), spec.clone());
            let fresh = state.cache.get(&tk).is_some_and(|t| t.refresh_at > now);
            let waiting = state.failing.get(&tk).is_some_and(|f| f.retry_at > now);
            if fresh || waiting || !state.in_flight.insert(tk.clone()) {
                continue;
            }
            let request = Request {
                client: client.clone(),
                pod: pod.clone(),
                sa: sa.clone(),
                spec: spec.clone(),
                bind,
            };
            tokio::spawn(run(
                request,
                tk,
                self.state.clone(),
                self.trigger.clone(),
                metrics.clone(),
                self.deadline,
            ));
        }
    }

    /// The tokens currently held for one parent object.
    pub fn for_pod(&self, key: &PodKey, uid: &str) -> BTreeMap<TokenSpec, String> {
        self.state()
            .cache
            .iter()
            .filter(|((k, u, _), _)| k == key && u == uid)
            .map(|((_, _, spec), t)| (spec.clone(), t.token.clone()))
            .collect()
    }

    /// Forgets tokens of parent objects that are gone (`keep` holds key and uid).
    pub fn retain(&self, keep: &BTreeSet<(PodKey, String)>) {
        let mut state = self.state();
        let kept = |(k, u, _): &TokenKey| keep.contains(&(k.clone(), u.clone()));
        state.cache.retain(|tk, _| kept(tk));
        state.failing.retain(|tk, _| kept(tk));
    }

    /// The earliest time a token is due for refresh or a failed request for a retry.
    pub fn next_refresh(&self) -> Option<Instant> {
        let state = self.state();
        let refresh = state.cache.values().map(|t| t.refresh_at);
        let retry = state.failing.values().map(|f| f.retry_at);
        refresh.chain(retry).min()
    }

    /// Whether a request is still out (tests wait on it).
    pub fn in_flight(&self) -> usize {
        self.state().in_flight.len()
    }
}

/// One TokenRequest, as the background task needs it.
struct Request {
    client: Client,
    pod: Pod,
    sa: String,
    spec: TokenSpec,
    bind: bool,
}

async fn run(
    request: Request,
    tk: TokenKey,
    state: Arc<Mutex<State>>,
    trigger: Trigger,
    metrics: Metrics,
    deadline: Duration,
) {
    let sent = Instant::now();
    let result = match tokio::time::timeout(deadline, request_token(&request)).await {
        Ok(result) => result,
        Err(_) => Err(("timeout", format!("no answer within {deadline:?}"))),
    };
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.in_flight.remove(&tk);
    let (key, _, _) = &tk;
    match result {
        Ok((token, lifetime)) => {
            // Counted from when the request was sent: the token is at least that old.
            let refresh_at = sent + lifetime.mul_f64(0.8);
            state
                .cache
                .insert(tk.clone(), CachedToken { token, refresh_at });
            if state.failing.remove(&tk).is_some() {
                tracing::info!(namespace = %key.namespace, pod = %key.name, action = "token", "service-account token obtained again");
            } else {
                tracing::debug!(namespace = %key.namespace, pod = %key.name, action = "token", "service-account token refreshed");
            }
            drop(state);
            trigger.notify_one();
        }
        Err((reason, error)) => {
            metrics.api_error("serviceaccounts/token", reason);
            let previous = state.failing.get(&tk).cloned();
            let backoff = previous
                .as_ref()
                .map_or(FIRST_RETRY, |f| (f.backoff * 2).min(MAX_RETRY));
            if previous.as_ref().map(|f| f.reason) != Some(reason) {
                tracing::warn!(namespace = %key.namespace, pod = %key.name, action = "token", reason, error, "could not obtain a service-account token for the checkpoint; retrying with back-off");
            } else {
                tracing::debug!(namespace = %key.namespace, pod = %key.name, reason, error, "service-account token still failing");
            }
            let retry_at = Instant::now() + backoff;
            state.failing.insert(
                tk,
                Failing {
                    reason,
                    retry_at,
                    backoff,
                },
            );
        }
    }
}

/// The token and its granted lifetime, or a reason label and message.
async fn request_token(r: &Request) -> Result<(String, Duration), (&'static str, String)> {
    let ns = r.pod.namespace().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(r.client.clone(), &ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: r.spec.audience.as_ref().map(|a| vec![a.clone()]),
            expiration_seconds: Some(r.spec.expiration_seconds),
            bound_object_ref: r.bind.then(|| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(r.pod.name_any()),
                uid: r.pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", &r.sa, &PostParams::default(), &req)
        .await
        .map_err(|e| (error_reason(&e), e.to_string()))?;
    let token = (resp.status.and_then(|s| s.token))
        .filter(|t| !t.is_empty())
        .ok_or(("rejected", "the answer held no token".to_owned()))?;
    let lifetime = granted_lifetime(&token).unwrap_or(FALLBACK_LIFETIME);
    Ok((token, lifetime))
}

/// How long the server made the token valid: `exp - iat` from its claims, which the server wrote
/// with its own clock, so the local clock's offset does not enter. `None` when the token does
/// not say.
fn granted_lifetime(jwt: &str) -> Option<Duration> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let (iat, exp) = (claims["iat"].as_u64()?, claims["exp"].as_u64()?);
    exp.checked_sub(iat).map(Duration::from_secs)
}

#[cfg(test)]
mod tests;
