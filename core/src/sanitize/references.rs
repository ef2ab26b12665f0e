//! What a parent references in the API, so the shell fetches (and watches) exactly that.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, ServiceAccountTokenProjection};

use super::containers;

/// The TokenRequest expiry the API defaults a `serviceAccountToken` projection to.
const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// A projected serviceAccountToken source: what to ask the TokenRequest API for.
///
/// Two sources with the same audience and expiry can share one token, hence the `Ord`/`Hash`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSpec {
    /// The audience the token is bound to; `None` means the API server's own audiences.
    pub audience: Option<String>,
    /// Requested lifetime; 3600 when the source sets none (the API's default).
    pub expiration_seconds: i64,
}

impl TokenSpec {
    /// The token a projection asks for, with the API's default expiry filled in.
    pub(super) fn of(projection: &ServiceAccountTokenProjection) -> Self {
        Self {
            audience: projection.audience.clone(),
            expiration_seconds: projection
                .expiration_seconds
                .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
        }
    }
}

/// What a pod references in its own namespace; the shell fetches exactly these (and watches them,
/// so a changed Secret or ConfigMap rewrites the checkpoint).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Secret names, from volumes, projected sources, `secretKeyRef` and `envFrom`.
    pub secrets: BTreeSet<String>,
    /// ConfigMap names, from volumes, projected sources, `configMapKeyRef` and `envFrom`.
    pub config_maps: BTreeSet<String>,
    /// Tokens to request for the parent pod, one per distinct audience/expiry.
    pub tokens: BTreeSet<TokenSpec>,
    /// The service account tokens are requested for (`serviceAccountName`, else the deprecated
    /// `serviceAccount`).
    pub service_account: Option<String>,
}

/// Lists every Secret, ConfigMap and service-account token the pod needs to be sanitized: from
/// `secret`, `configMap` and `projected` volumes and from `env`/`envFrom` of containers and init
/// containers. Ephemeral containers are ignored: they are dropped from checkpoints.
pub fn references(pod: &Pod) -> References {
    let mut refs = References::default();
    let Some(spec) = pod.spec.as_ref() else {
        return refs;
    };
    let add = |set: &mut BTreeSet<String>, name: &str| {
        if !name.is_empty() {
            set.insert(name.to_owned());
        }
    };
    for volume in spec.volumes.iter().flatten() {
        if let Some(s) = &volume.secret {
            add(&mut refs.secrets, s.secret_name.as_deref().unwrap_or(""));
        }
        if let Some(c) = &volume.config_map {
            add(&mut refs.config_maps, &c.name);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(s) = &source.secret {
                add(&mut refs.secrets, &s.name);
            }
            if let Some(c) = &source.config_map {
                add(&mut refs.config_maps, &c.name);
            }
            if let Some(token) = &source.service_account_token {
                refs.tokens.insert(TokenSpec::of(token));
            }
        }
    }
    for container in containers(spec) {
        for from in container
            .env
            .iter()
            .flatten()
            .filter_map(|v| v.value_from.as_ref())
        {
            if let Some(r) = &from.secret_key_ref {
                add(&mut refs.secrets, &r.name);
            }
            if let Some(r) = &from.config_map_key_ref {
                add(&mut refs.config_maps, &r.name);
            }
        }
        for source in container.env_from.iter().flatten() {
            if let Some(r) = &source.secret_ref {
                add(&mut refs.secrets, &r.name);
            }
            if let Some(r) = &source.config_map_ref {
                add(&mut refs.config_maps, &r.name);
            }
        }
    }

    refs.service_account = spec
        .service_account_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or(spec.service_account.as_deref().filter(|n| !n.is_empty()))
        .map(str::to_owned);
    refs
}
