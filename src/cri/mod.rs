//! The container runtime, over CRI v1, is the node's truth about which pods run (SPEC §1 "node
//! view"). This is a deliberately small client on the runtime's unix socket: the messages and the
//! `RuntimeService` client in [`proto`] are generated at build time from the vendored upstream
//! `api.proto` (see `build.rs`), so they cannot drift from what runtimes speak, and this module
//! only adds deadlines, error reporting and the pod-level view the agent decides on.
//!
//! A failed call is an error, never an empty answer: the decision core must be able to tell "the
//! runtime said nothing runs" from "the runtime did not answer" (SPEC §4, *unknown is not
//! "stopped"*).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::model::PodKey;

pub mod proto;
#[cfg(test)]
mod tests;

/// The CRI v1 gRPC service every call of this client goes to (for [`CriClient::unary`]).
const RUNTIME_SERVICE: &str = "runtime.v1.RuntimeService";

/// Largest answer accepted, as the kubelet does (a node with many pods easily exceeds tonic's 4 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The default per-call deadline; a runtime that takes longer is treated as not answering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which pods the runtime says are running: a pod counts as running when it has a READY sandbox or
/// a RUNNING container (SPEC §1), keyed by the sandbox metadata's namespace/name.
pub type Running = BTreeSet<PodKey>;

/// The `k8s.io/cri-api` version the client is generated from (set by `build.rs`), so logs and
/// bug reports can say which CRI revision the agent expects of the runtime.
pub const CRI_API_VERSION: &str = env!("CRI_API_VERSION");

/// The generated `runtime.v1.RuntimeService` client on this module's unix-socket channel.
type RuntimeService = proto::runtime_service_client::RuntimeServiceClient<Channel>;

/// One pod sandbox as the runtime reports it, reduced to what the agent decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// The runtime's sandbox id (needed to stop or remove it).
    pub id: String,
    /// The pod it belongs to (sandbox metadata namespace/name).
    pub key: PodKey,
    /// The pod UID the kubelet created it for: tells a recreated pod from its predecessor.
    pub uid: String,
    /// READY: the sandbox's pause process and namespaces are up.
    pub ready: bool,
}

/// Why a CRI call gave no answer. Every variant names the endpoint and the call, so a log line is
/// enough to find the broken runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The configured endpoint is not something this client can dial.
    #[error("invalid CRI endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// The client was built outside a Tokio runtime (its channel needs one for its worker task).
    #[error("creating the CRI client for {endpoint} needs a running Tokio runtime")]
    NoRuntime { endpoint: String },
    /// The runtime did not answer before the deadline.
    #[error("runtime at {endpoint} did not answer {method} within {timeout:?}")]
    Timeout {
        endpoint: String,
        method: &'static str,
        timeout: Duration,
    },
    /// The socket could not be reached or the connection broke (gRPC UNAVAILABLE).
    #[error("runtime at {endpoint} unavailable for {method}: {message}")]
    Unavailable {
        endpoint: String,
        method: &'static str,
        message: String,
    },
    /// The runtime answered with a gRPC error.
    #[error("runtime at {endpoint} failed {method}: {code:?}: {message}")]
    Status {
        endpoint: String,
        method: &'static str,
        code: tonic::Code,
        message: String,
    },
}

/// A CRI v1 RuntimeService client on a unix socket. Cheap to clone (the channel is shared); it
/// connects lazily and reconnects by itself after the runtime restarts.
#[derive(Clone, Debug)]
pub struct CriClient {
    /// As given by the operator (normalised to `unix://...`), for error messages.
    endpoint: String,
    channel: Channel,
    timeout: Duration,
}

impl CriClient {
    /// Builds a client for `unix:///path` (or a bare absolute `/path`). Nothing is dialled yet: the
    /// first call connects, so the agent can start before the runtime does. Must be called inside a
    /// Tokio runtime.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, CriError> {
        let path = socket_path(endpoint)?;
        let display = format!("unix://{}", path.display());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(CriError::NoRuntime { endpoint: display });
        }
        // The URI is only a placeholder required by tonic; the connector ignores it.
        let channel = Endpoint::try_from("http://[::]:50051")
            .map_err(|e| CriError::InvalidEndpoint {
                endpoint: display.clone(),
                reason: e.to_string(),
            })?
            .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move { connect_unix(&path).await.map(TokioIo::new) }
            }));
        Ok(Self {
            endpoint: display,
            channel,
            timeout,
        })
    }

    /// The endpoint this client talks to, as `unix:///path`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Which pods run on the node now: ListContainers (RUNNING), then ListPodSandbox, combined by
    /// [`running_from`]. Containers are listed first so every container's sandbox (created before
    /// it) is in the later sandbox list. Any failed call fails the whole answer.
    pub async fn running(&self) -> Result<Running, CriError> {
        let containers = self
            .list_containers(Some(proto::ContainerState::ContainerRunning))
            .await?;
        let sandboxes = self.list_pod_sandbox().await?;
        Ok(running_from(&sandboxes, &containers))
    }

    /// Every sandbox the runtime knows, ready or not. Sandboxes without metadata (not created by a
    /// kubelet) cannot belong to a pod and are left out.
    pub async fn list_sandboxes(&self) -> Result<Vec<Sandbox>, CriError> {
        Ok(self
            .list_pod_sandbox()
            .await?
            .into_iter()
            .filter_map(|s| {
                let ready = is_ready(&s);
                let meta = s.metadata?;
                Some(Sandbox {
                    id: s.id,
                    key: PodKey::new(meta.namespace, meta.name),
                    uid: meta.uid,
                    ready,
                })
            })
            .collect())
    }

    /// Stops, then removes, one sandbox and its containers (what a reboot does to a node's pods).
    /// Used by tests; the agent itself never kills pods.
    pub async fn stop_and_remove_sandbox(&self, id: &str) -> Result<(), CriError> {
        let pod_sandbox_id = id.to_owned();
        let stop = proto::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.clone(),
        };
        self.call("StopPodSandbox", stop, async |mut c, r| {
            c.stop_pod_sandbox(r).await
        })
        .await?;
        let remove = proto::RemovePodSandboxRequest { pod_sandbox_id };
        self.call("RemovePodSandbox", remove, async |mut c, r| {
            c.remove_pod_sandbox(r).await
        })
        .await?;
        Ok(())
    }

    /// Raw ListPodSandbox without a filter.
    pub async fn list_pod_sandbox(&self) -> Result<Vec<proto::PodSandbox>, CriError> {
        let request = proto::ListPodSandboxRequest { filter: None };
        let resp = self
            .call("ListPodSandbox", request, async |mut c, r| {
                c.list_pod_sandbox(r).await
            })
            .await?;
        Ok(resp.items)
    }

    /// Raw ListContainers, optionally only those in `state` (filtered by the runtime, which keeps
    /// the answer small on nodes with many exited containers).
    pub async fn list_containers(
        &self,
        state: Option<proto::ContainerState>,
    ) -> Result<Vec<proto::Container>, CriError> {
        let filter = state.map(|s| proto::ContainerFilter {
            state: Some(proto::ContainerStateValue { state: s.into() }),
            ..Default::default()
        });
        let request = proto::ListContainersRequest { filter };
        let resp = self
            .call("ListContainers", request, async |mut c, r| {
                c.list_containers(r).await
            })
            .await?;
        Ok(resp.containers)
    }

    /// Runs one call of the generated client under this client's deadline and error reporting:
    /// a new CRI call is one line, `self.call("Name", request, async |mut c, r| c.name(r).await)`.
    /// `method` is the RPC's name as the runtime logs it, for the error message.
    async fn call<Req, Resp>(
        &self,
        method: &'static str,
        request: Req,
        rpc: impl AsyncFnOnce(
            RuntimeService,
            tonic::Request<Req>,
        ) -> Result<tonic::Response<Resp>, tonic::Status>,
    ) -> Result<Resp, CriError> {
        let call = async {
            let mut channel = self.channel.clone();
            // Wait for readiness here rather than in the generated client, which would turn a
            // failed connection into UNKNOWN ("Service was not ready") and so hide UNAVAILABLE.
            // The reserved slot moves with the channel into the client.
            tower::ServiceExt::<http::Request<tonic::body::Body>>::ready(&mut channel)
                .await
                .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
            let client = RuntimeService::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
            rpc(client, self.request(request)).await
        };
        self.within_deadline(method, call).await
    }

    /// Calls one unary `runtime.v1.RuntimeService/<method>` with caller-defined prost messages,
    /// under this client's deadline and error reporting. Kept public for calls the agent never
    /// makes (the containerd test's RunPodSandbox, with the generated messages); agent code
    /// should add a typed method on the generated client instead, which cannot misspell
    /// the method or pair it with the wrong messages.
    pub async fn unary<Req, Resp>(
        &self,
        method: &'static str,
        request: Req,
    ) -> Result<Resp, CriError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let path = format!("/{RUNTIME_SERVICE}/{method}");
        let path = http::uri::PathAndQuery::try_from(path).map_err(|e| CriError::Status {
            endpoint: self.endpoint.clone(),
            method,
            code: tonic::Code::InvalidArgument,
            message: format!("invalid method name: {e}"),
        })?;
        let call = async {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::from_error(Box::new(e)))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(self.request(request), path, codec).await
        };
        self.within_deadline(method, call).await
    }

    /// Wraps a message for one call, telling the runtime our deadline too (grpc-timeout), so it
    /// can give up with us.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Enforces the deadline locally as well: a runtime that accepts the connection but never
    /// answers (or a connect that hangs) must still end in [`CriError::Timeout`].
    async fn within_deadline<Resp>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    ) -> Result<Resp, CriError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_elapsed) => Err(CriError::Timeout {
                endpoint: self.endpoint.clone(),
                method,
                timeout: self.timeout,
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.status_error(method, status)),
        }
    }

    fn status_error(&self, method: &'static str, status: tonic::Status) -> CriError {
        let endpoint = self.endpoint.clone();
        match status.code() {
            // tonic enforces the grpc-timeout we send on the client side too and reports it as
            // Cancelled ("Timeout expired"); the runtime reports its side as DeadlineExceeded.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => CriError::Timeout {
                endpoint,
                method,
                timeout: self.timeout,
            },
            tonic::Code::Unavailable => CriError::Unavailable {
                endpoint,
                method,
                message: status.message().to_owned(),
            },
            code => CriError::Status {
                endpoint,
                method,
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

/// Dials the runtime socket; the error names the path because tonic keeps only its text.
async fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(path).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("connecting to {}: {e}", path.display()))
    })
}

/// `unix:///path` or `/path` → `/path`. Other schemes (tcp, npipe) are not CRI on Linux nodes.
fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let invalid = |reason: &str| CriError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let path = match endpoint.strip_prefix("unix://") {
        Some(rest) => rest,
        None if endpoint.contains("://") => {
            return Err(invalid("only unix:// sockets are supported"));
        }
        None => endpoint,
    };
    if path.is_empty() {
        return Err(invalid("no socket path"));
    }
    if !path.starts_with('/') {
        return Err(invalid(
            "the socket path must be absolute (unix:///run/...)",
        ));
    }
    Ok(PathBuf::from(path))
}

fn is_ready(sandbox: &proto::PodSandbox) -> bool {
    sandbox.state == i32::from(proto::PodSandboxState::SandboxReady)
}

/// The pure part of [`CriClient::running`]: a pod runs when one of its sandboxes is READY, or when
/// a RUNNING container sits in one of its sandboxes (ready or not). Containers count only through
/// their sandbox's metadata, because container metadata does not name the pod; a container whose
/// sandbox is not in `sandboxes` is ignored. Sandboxes without metadata are ignored.
pub fn running_from(sandboxes: &[proto::PodSandbox], containers: &[proto::Container]) -> Running {
    let by_id: HashMap<&str, &proto::PodSandboxMetadata> = sandboxes
        .iter()
        .filter_map(|s| s.metadata.as_ref().map(|m| (s.id.as_str(), m)))
        .collect();
    let key = |m: &proto::PodSandboxMetadata| PodKey::new(&m.namespace, &m.name);

    let ready = sandboxes
        .iter()
        .filter(|s| is_ready(s))
        .filter_map(|s| s.metadata.as_ref().map(key));
    let with_running_container = containers
        .iter()
        .filter(|c| c.state == i32::from(proto::ContainerState::ContainerRunning))
        .filter_map(|c| by_id.get(c.pod_sandbox_id.as_str()).map(|m| key(m)));
    ready.chain(with_running_container).collect()
}
