//! Service-account tokens for projected volumes, which only the API server can issue: obtained
//! ahead of time so a checkpoint carries a valid one when the API is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::error_reason;
use crate::metrics::Metrics;
use crate::model::{PodKey, Redacted};
use crate::sanitize::TokenSpec;

/// A token obtained for one parent and one projected source. `Debug` shows its size, never the
/// token: it is a credential.
#[derive(Clone)]
struct CachedToken {
    token: String,
    refresh_at: jiff::Timestamp,
}

impl fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedToken")
            .field("token", &Redacted(self.token.as_bytes()))
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// Service-account tokens for projected volumes, obtained through the TokenRequest API bound to
/// the parent pod and refreshed at 80% of their life while the API is up.
#[derive(Default)]
pub struct Tokens {
    cache: BTreeMap<(PodKey, TokenSpec), CachedToken>,
}

impl Tokens {
    /// Requests the tokens `pod` needs that are missing or due for refresh. Failures keep the
    /// old token (it is still valid for a while) and are reported.
    ///
    /// `bind` ties each token to the pod, so it dies with it. The agent's own checkpoint is not
    /// bound: its static copy must still reach the API server after the DaemonSet pod is gone,
    /// to learn that it was replaced or removed (the token still dies with the ServiceAccount).
    pub async fn refresh(
        &mut self,
        client: &Client,
        pod: &Pod,
        specs: &BTreeSet<TokenSpec>,
        bind: bool,
        metrics: &Metrics,
    ) {
        let key = PodKey::new(pod.namespace().unwrap_or_default(), pod.name_any());
        let now = jiff::Timestamp::now();
        let Some(sa) = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
        else {
            return;
        };
        for spec in specs {
            let ck = (key.clone(), spec.clone());
            if self.cache.get(&ck).is_some_and(|t| t.refresh_at > now) {
                continue;
            }
            match request_token(client, pod, &sa, spec, bind).await {
                Ok((token, lifetime)) => {
                    let refresh_at = now
                        .checked_add(lifetime.mul_f64(0.8))
                        .unwrap_or(jiff::Timestamp::MAX);
                    self.cache.insert(ck, CachedToken { token, refresh_at });
                    tracing::debug!(namespace = %key.namespace, pod = %key.name, "service-account token refreshed");
                }
                Err(e) => {
                    let reason = error_reason(&e);
                    metrics.api_error("serviceaccounts/token", reason);
                    tracing::warn!(namespace = %key.namespace, pod = %key.name, reason, error = %e, "could not obtain a service-account token for the checkpoint");
                }
            }
        }
    }

    /// The tokens currently held for one parent.
    pub fn for_pod(&self, key: &PodKey) -> BTreeMap<TokenSpec, String> {
        self.cache
            .iter()
            .filter(|((k, _), _)| k == key)
            .map(|((_, spec), t)| (spec.clone(), t.token.clone()))
            .collect()
    }

    /// Forgets tokens of parents that are gone.
    pub fn retain(&mut self, keep: &BTreeSet<PodKey>) {
        self.cache.retain(|(k, _), _| keep.contains(k));
    }

    /// The earliest time a token is due for refresh.
    pub fn next_refresh(&self) -> Option<jiff::Timestamp> {
        self.cache.values().map(|t| t.refresh_at).min()
    }
}

async fn request_token(
    client: &Client,
    pod: &Pod,
    sa: &str,
    spec: &TokenSpec,
    bind: bool,
) -> Result<(String, Duration), kube::Error> {
    let ns = pod.namespace().unwrap_or_default();
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: spec.audience.as_ref().map(|a| vec![a.clone()]),
            expiration_seconds: Some(spec.expiration_seconds),
            bound_object_ref: bind.then(|| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await?;
    let status = resp.status.unwrap_or_default();
    let lifetime = status
        .expiration_timestamp
        .map(|t| t.0.duration_since(jiff::Timestamp::now()))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(600));
    Ok((status.token.unwrap_or_default(), lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_cached_token_shows_its_size_and_refresh_time_never_the_token() {
        let secret = "eyJhbGciOiJSUzI1NiJ9.s3cr3t-claims.s1gnature";
        let cached = CachedToken {
            token: secret.to_owned(),
            refresh_at: jiff::Timestamp::UNIX_EPOCH,
        };
        for text in [format!("{cached:?}"), format!("{cached:#?}")] {
            assert!(!text.contains(secret), "{text}");
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(text.contains(&format!("{} bytes", secret.len())), "{text}");
            assert!(text.contains("1970-01-01T00:00:00Z"), "{text}");
        }
    }
}
