//! The kubelet's `GET /pods`: a second source of parents (SPEC §1 "node view"). The kubelet keeps
//! the pods bound to its node, with its own view of their status, while the API server is down,
//! until the node reboots; so after the API server disappears the agent still learns about parents
//! it had not checkpointed yet, and, when no CRI endpoint is configured, which pods run.
//!
//! Built on `kube::Client` pointed at the kubelet, so TLS (CA file re-read by kube when it
//! rotates) and client certificates come from the same HTTP stack as the API client; the bearer
//! token file is re-read for every request, so a rotated token is used at once.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::cri::Running;
use crate::model::PodKey;

/// How to reach and authenticate to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletConfig {
    /// Base URL: `https://127.0.0.1:10250` (authenticated) or `http://127.0.0.1:10255` (read-only
    /// port). `/pods` is appended.
    pub url: String,
    /// Bearer token file (e.g. the projected service account token). Re-read on every request so a
    /// rotated token is picked up at once; surrounding whitespace (a trailing newline) is ignored.
    pub token_file: Option<PathBuf>,
    /// PEM client certificate for x509 authentication (needs `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// PEM CA bundle the kubelet's serving certificate must chain to; re-read periodically.
    pub ca_file: Option<PathBuf>,
    /// Accept any serving certificate (kubelets often serve a self-signed one).
    pub insecure_skip_tls_verify: bool,
    /// Deadline for one `GET /pods`, connection included.
    pub timeout: Duration,
}

impl KubeletConfig {
    /// A config for `url` without credentials and with a 2s deadline; set the rest as needed.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token_file: None,
            client_cert: None,
            client_key: None,
            ca_file: None,
            insecure_skip_tls_verify: false,
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why the kubelet gave no usable pod list. Every variant names the kubelet URL.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The configuration cannot work (bad URL, non-UTF-8 path, key without certificate...).
    #[error("invalid kubelet configuration for {url:?}: {reason}")]
    InvalidConfig { url: String, reason: String },
    /// The client was built outside a Tokio runtime (kube's client needs one for its worker task).
    #[error("creating the kubelet client for {url} needs a running Tokio runtime")]
    NoRuntime { url: String },
    /// kube could not build a client (unreadable CA, certificate, key or token file...).
    #[error("building the kubelet client for {url}: {detail}")]
    Client { url: String, detail: String },
    /// The kubelet did not answer before the deadline.
    #[error("kubelet at {url} did not answer GET /pods within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// Connection, TLS, authentication or HTTP status failure.
    #[error("GET {url}/pods failed: {detail}")]
    Request { url: String, detail: String },
    /// The body is not a JSON pod list.
    #[error("kubelet at {url} answered GET /pods with {what}")]
    BadBody { url: String, what: String },
}

/// What the kubelet returned: the pods that parsed, and a description of each item that did not
/// (one odd pod must not hide the others).
#[derive(Clone, Debug, Default)]
pub struct KubeletPods {
    /// Pods bound to this node, with the kubelet's own status for them.
    pub pods: Vec<Pod>,
    /// One line per skipped item: its index, its namespace/name when readable, and the parse error.
    pub unparsable: Vec<String>,
}

/// Client for the kubelet's `/pods`. Cheap to clone.
#[derive(Clone)]
pub struct KubeletClient {
    client: kube::Client,
    url: String,
    timeout: Duration,
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Builds the client; credential and CA files are read now, so a wrong path fails at start
    /// rather than on every poll. Nothing is dialled yet. Must be called inside a Tokio runtime.
    pub fn new(cfg: &KubeletConfig) -> Result<Self, KubeletError> {
        let url = cfg.url.trim_end_matches('/').to_owned();
        let invalid = |reason: String| KubeletError::InvalidConfig {
            url: url.clone(),
            reason,
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => {
                return Err(invalid(
                    "the URL must start with http:// or https://".into(),
                ));
            }
        }
        if uri.authority().is_none() {
            return Err(invalid("the URL has no host".into()));
        }
        if cfg.client_cert.is_some() != cfg.client_key.is_some() {
            return Err(invalid(
                "a client certificate and its key must be given together".into(),
            ));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(KubeletError::NoRuntime { url });
        }
        if uri.scheme_str() == Some("http") && cfg.token_file.is_some() {
            tracing::warn!(
                url = %url,
                "sending the kubelet bearer token over plain http"
            );
        }

        let path_string = |what: &str, p: &Path| {
            p.to_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{what} path {} is not UTF-8", p.display())))
        };
        let mut config = kube::Config::new(uri);
        config.connect_timeout = Some(cfg.timeout);
        config.read_timeout = Some(cfg.timeout);
        config.write_timeout = Some(cfg.timeout);
        // The agent polls every second anyway; a retry would only delay "the kubelet is gone".
        config.default_retry = false;
        config.accept_invalid_certs = cfg.insecure_skip_tls_verify;
        if let Some(ca) = &cfg.ca_file {
            // kube's own error would not name the file.
            std::fs::File::open(ca).map_err(|e| KubeletError::Client {
                url: url.clone(),
                detail: format!("CA file {}: {e}", ca.display()),
            })?;
        }
        // Re-read periodically by kube, so a rotated CA is picked up.
        config.root_cert_file = cfg.ca_file.clone();
        // Without roots of its own, kube's TLS setup asks the system for its roots even for a
        // plain-http URL, and the agent's image (one static binary) has none: the client would
        // fail to build. The system's roots are needed only for https with no CA file; with a
        // CA file kube verifies against that file alone, and for http nothing is verified.
        let system_roots = config.cluster_url.scheme_str() == Some("https")
            && cfg.ca_file.is_none()
            && !cfg.insecure_skip_tls_verify;
        if !system_roots {
            config.root_cert = Some(Vec::new());
        }
        if let Some(p) = &cfg.client_cert {
            config.auth_info.client_certificate = Some(path_string("client certificate", p)?);
        }
        if let Some(p) = &cfg.client_key {
            config.auth_info.client_key = Some(path_string("client key", p)?);
        }
        let client = kube::Client::try_from(config).map_err(|e| KubeletError::Client {
            url: url.clone(),
            detail: error_chain(&e),
        })?;
        let client = Self {
            client,
            url,
            timeout: cfg.timeout,
            token_file: cfg.token_file.clone(),
        };
        // Fail at start on a wrong path or an unusable token, not on every poll.
        client
            .authorization()
            .map_err(|detail| KubeletError::Client {
                url: client.url.clone(),
                detail,
            })?;
        Ok(client)
    }

    /// `Authorization: Bearer <token>` from the token file, read on every call. (kube's own
    /// token-file support caches the token for a minute and keeps a trailing newline, which makes
    /// the header invalid.)
    fn authorization(&self) -> Result<Option<http::HeaderValue>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let fail =
            |what: &dyn std::fmt::Display| format!("bearer token file {}: {what}", path.display());
        let token = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(fail(&"empty"));
        }
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| fail(&"not a valid HTTP header value"))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// The kubelet base URL, for logs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET <url>/pods`. Items that fail to parse as a Pod are skipped and reported in
    /// [`KubeletPods::unparsable`], never fatal for the rest (not logged here: the caller polls
    /// every second and should log when that list changes); a failed request or a body that is not
    /// a pod list is an error, never an empty list.
    pub async fn pods(&self) -> Result<KubeletPods, KubeletError> {
        let mut request = http::Request::get("/pods");
        let auth = self
            .authorization()
            .map_err(|detail| KubeletError::Request {
                url: self.url.clone(),
                detail,
            })?;
        if let Some(auth) = auth {
            request = request.header(http::header::AUTHORIZATION, auth);
        }
        let request = request
            .body(Vec::new())
            .map_err(|e| KubeletError::Request {
                url: self.url.clone(),
                detail: format!("building the request: {e}"),
            })?;
        let text = tokio::time::timeout(self.timeout, self.client.request_text(request))
            .await
            .map_err(|_elapsed| KubeletError::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            })?
            .map_err(|e| KubeletError::Request {
                url: self.url.clone(),
                detail: error_chain(&e),
            })?;
        let pods = parse_pod_list(&text).map_err(|what| KubeletError::BadBody {
            url: self.url.clone(),
            what,
        })?;
        Ok(pods)
    }
}

/// Parses a `PodList` body item by item. `Err` describes why the body as a whole is unusable.
fn parse_pod_list(text: &str) -> Result<KubeletPods, String> {
    let body: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut body) = body else {
        return Err("a JSON value that is not an object".into());
    };
    let items = match body.remove("items") {
        // Go encodes an empty list as null.
        Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err("an `items` field that is not a list".into()),
        None => return Err("no `items` field (not a PodList)".into()),
    };
    let mut out = KubeletPods::default();
    for (i, item) in items.into_iter().enumerate() {
        let name = item_name(&item);
        match serde_json::from_value::<Pod>(item) {
            Ok(pod) => out.pods.push(pod),
            Err(e) => out.unparsable.push(match name {
                Some(name) => format!("items[{i}] ({name}): {e}"),
                None => format!("items[{i}]: {e}"),
            }),
        }
    }
    Ok(out)
}

/// `namespace/name` of a raw item, when those two are readable strings, for error reports.
fn item_name(item: &Value) -> Option<String> {
    let meta = item.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let namespace = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    Some(format!("{namespace}/{name}"))
}

/// The kubelet's answer to "which pods run", for nodes where no CRI endpoint is configured: a pod
/// runs when its phase is `Running` and at least one of its containers (regular, or a restartable
/// init container, i.e. a sidecar) is in state `running`. Pods without a name are ignored; a
/// missing namespace means `default`, as the kubelet itself defaults it.
pub fn running_from_status(pods: &[Pod]) -> Running {
    pods.iter()
        .filter_map(|pod| {
            let status = pod.status.as_ref()?;
            if status.phase.as_deref() != Some("Running") {
                return None;
            }
            let statuses = status
                .container_statuses
                .iter()
                .flatten()
                .chain(status.init_container_statuses.iter().flatten());
            let mut states = statuses.filter_map(|c| c.state.as_ref());
            if !states.any(|s| s.running.is_some()) {
                return None;
            }
            let name = pod.metadata.name.as_deref()?;
            let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
            Some(PodKey::new(namespace, name))
        })
        .collect()
}

/// An error and its sources on one line ("a: b: c"), skipping a source whose text its parent
/// already contains (kube and hyper often repeat it).
fn error_chain(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests;
