//! The container runtime, over CRI v1, is the node's truth about which pods run (SPEC §1 "node
//! view"). This is a deliberately small client: it hand-writes the few CRI messages it needs as
//! prost structs (no protoc, no build script) and talks gRPC over the runtime's unix socket.
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

/// The CRI v1 gRPC service every call of this client goes to.
const RUNTIME_SERVICE: &str = "runtime.v1.RuntimeService";

/// Largest answer accepted, as the kubelet does (a node with many pods easily exceeds tonic's 4 MiB).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The default per-call deadline; a runtime that takes longer is treated as not answering.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which pods the runtime says are running: a pod counts as running when it has a READY sandbox or
/// a RUNNING container (SPEC §1), keyed by the sandbox metadata's namespace/name.
pub type Running = BTreeSet<PodKey>;

/// Hand-written subset of `k8s.io/cri-api/pkg/apis/runtime/v1/api.proto`.
///
/// Only the fields this agent reads or sends are declared; prost skips the others when decoding,
/// so the runtime may send anything newer. Field numbers match the upstream proto exactly; change
/// them only against that file.
pub mod proto {
    use std::collections::HashMap;

    /// `ListPodSandboxRequest`: every sandbox unless a filter narrows it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<PodSandboxFilter>,
    }

    /// `PodSandboxFilter`: all set fields must match (AND).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub state: Option<PodSandboxStateValue>,
        #[prost(map = "string, string", tag = "3")]
        pub label_selector: HashMap<String, String>,
    }

    /// `PodSandboxStateValue`: wrapper so "no state filter" differs from "READY" (which is 0).
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct PodSandboxStateValue {
        #[prost(enumeration = "PodSandboxState", tag = "1")]
        pub state: i32,
    }

    /// `PodSandboxState`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum PodSandboxState {
        SandboxReady = 0,
        SandboxNotready = 1,
    }

    /// `ListPodSandboxResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListPodSandboxResponse {
        #[prost(message, repeated, tag = "1")]
        pub items: Vec<PodSandbox>,
    }

    /// `PodSandbox` (id, metadata, state; the rest is skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandbox {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub metadata: Option<PodSandboxMetadata>,
        #[prost(enumeration = "PodSandboxState", tag = "3")]
        pub state: i32,
    }

    /// `PodSandboxMetadata`: the pod the sandbox belongs to, as the kubelet named it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PodSandboxMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub uid: String,
        #[prost(string, tag = "3")]
        pub namespace: String,
        #[prost(uint32, tag = "4")]
        pub attempt: u32,
    }

    /// `ListContainersRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersRequest {
        #[prost(message, optional, tag = "1")]
        pub filter: Option<ContainerFilter>,
    }

    /// `ContainerFilter`: all set fields must match (AND).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerFilter {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(message, optional, tag = "2")]
        pub state: Option<ContainerStateValue>,
        #[prost(string, tag = "3")]
        pub pod_sandbox_id: String,
        #[prost(map = "string, string", tag = "4")]
        pub label_selector: HashMap<String, String>,
    }

    /// `ContainerStateValue`: wrapper so "no state filter" differs from "CREATED" (which is 0).
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ContainerStateValue {
        #[prost(enumeration = "ContainerState", tag = "1")]
        pub state: i32,
    }

    /// `ContainerState`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum ContainerState {
        ContainerCreated = 0,
        ContainerRunning = 1,
        ContainerExited = 2,
        ContainerUnknown = 3,
    }

    /// `ListContainersResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListContainersResponse {
        #[prost(message, repeated, tag = "1")]
        pub containers: Vec<Container>,
    }

    /// `Container` (id, sandbox, metadata, state; the rest is skipped).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Container {
        #[prost(string, tag = "1")]
        pub id: String,
        #[prost(string, tag = "2")]
        pub pod_sandbox_id: String,
        #[prost(message, optional, tag = "3")]
        pub metadata: Option<ContainerMetadata>,
        #[prost(enumeration = "ContainerState", tag = "6")]
        pub state: i32,
    }

    /// `ContainerMetadata`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ContainerMetadata {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(uint32, tag = "2")]
        pub attempt: u32,
    }

    /// `StopPodSandboxRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// `StopPodSandboxResponse` (empty).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StopPodSandboxResponse {}

    /// `RemovePodSandboxRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemovePodSandboxRequest {
        #[prost(string, tag = "1")]
        pub pod_sandbox_id: String,
    }

    /// `RemovePodSandboxResponse` (empty).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RemovePodSandboxResponse {}
}

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
        let _: proto::StopPodSandboxResponse = self
            .unary(
                "StopPodSandbox",
                proto::StopPodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                },
            )
            .await?;
        let _: proto::RemovePodSandboxResponse = self
            .unary(
                "RemovePodSandbox",
                proto::RemovePodSandboxRequest {
                    pod_sandbox_id: id.to_owned(),
                },
            )
            .await?;
        Ok(())
    }

    /// Raw ListPodSandbox without a filter.
    pub async fn list_pod_sandbox(&self) -> Result<Vec<proto::PodSandbox>, CriError> {
        let resp: proto::ListPodSandboxResponse = self
            .unary(
                "ListPodSandbox",
                proto::ListPodSandboxRequest { filter: None },
            )
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
        let resp: proto::ListContainersResponse = self
            .unary("ListContainers", proto::ListContainersRequest { filter })
            .await?;
        Ok(resp.containers)
    }

    /// Calls one unary `runtime.v1.RuntimeService/<method>` with caller-defined prost messages,
    /// under this client's deadline and error reporting. Public so tests (and later features) can
    /// issue calls this module has no typed wrapper for (e.g. RunPodSandbox) without a second
    /// connection setup.
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
            let mut request = tonic::Request::new(request);
            // Tells the runtime our deadline too (grpc-timeout), so it can give up with us.
            request.set_timeout(self.timeout);
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(request, path, codec).await
        };
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

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;

    fn sandbox(id: &str, ns: &str, name: &str, state: PodSandboxState) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: ns.into(),
                attempt: 0,
            }),
            state: state.into(),
        }
    }

    fn container(id: &str, sandbox: &str, state: ContainerState) -> Container {
        Container {
            id: id.into(),
            pod_sandbox_id: sandbox.into(),
            metadata: Some(ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            state: state.into(),
        }
    }

    #[test]
    fn ready_sandbox_runs() {
        let got = running_from(
            &[sandbox(
                "s1",
                "kube-system",
                "api",
                PodSandboxState::SandboxReady,
            )],
            &[],
        );
        assert_eq!(got, Running::from([PodKey::new("kube-system", "api")]));
    }

    #[test]
    fn not_ready_sandbox_with_running_container_runs() {
        let got = running_from(
            &[sandbox("s1", "ns", "p", PodSandboxState::SandboxNotready)],
            &[container("c1", "s1", ContainerState::ContainerRunning)],
        );
        assert_eq!(got, Running::from([PodKey::new("ns", "p")]));
    }

    #[test]
    fn not_ready_sandbox_with_exited_container_does_not_run() {
        let got = running_from(
            &[sandbox("s1", "ns", "p", PodSandboxState::SandboxNotready)],
            &[
                container("c1", "s1", ContainerState::ContainerExited),
                container("c2", "s1", ContainerState::ContainerCreated),
                container("c3", "s1", ContainerState::ContainerUnknown),
            ],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn container_of_unknown_sandbox_is_ignored() {
        let got = running_from(
            &[sandbox("s1", "ns", "p", PodSandboxState::SandboxNotready)],
            &[container("c1", "gone", ContainerState::ContainerRunning)],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn sandbox_without_metadata_is_ignored() {
        let mut s = sandbox("s1", "ns", "p", PodSandboxState::SandboxReady);
        s.metadata = None;
        let got = running_from(
            std::slice::from_ref(&s),
            &[container("c1", "s1", ContainerState::ContainerRunning)],
        );
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn old_not_ready_attempt_beside_ready_one_still_runs() {
        let got = running_from(
            &[
                sandbox("old", "ns", "p", PodSandboxState::SandboxNotready),
                sandbox("new", "ns", "p", PodSandboxState::SandboxReady),
            ],
            &[],
        );
        assert_eq!(got, Running::from([PodKey::new("ns", "p")]));
    }

    /// Field numbers are the contract with the runtime: decode bytes encoded with the upstream
    /// numbering (hand-assembled) and check every field lands where it should.
    #[test]
    fn wire_format_matches_upstream_field_numbers() {
        use prost::Message;
        // PodSandbox{id=1:"s", metadata=2:{name=1:"n", uid=2:"u", namespace=3:"ns", attempt=4:7},
        //            state=3:1, created_at=4:5 (unknown to us, must be skipped)}
        let meta = [0x0a, 1, b'n', 0x12, 1, b'u', 0x1a, 2, b'n', b's', 0x20, 7];
        let mut sb = vec![0x0a, 1, b's', 0x12, meta.len() as u8];
        sb.extend_from_slice(&meta);
        sb.extend_from_slice(&[0x18, 1, 0x20, 5]);
        let mut list = vec![0x0a, sb.len() as u8];
        list.extend_from_slice(&sb);
        let got = ListPodSandboxResponse::decode(list.as_slice()).expect("decodes");
        assert_eq!(
            got.items,
            vec![PodSandbox {
                id: "s".into(),
                metadata: Some(PodSandboxMetadata {
                    name: "n".into(),
                    uid: "u".into(),
                    namespace: "ns".into(),
                    attempt: 7,
                }),
                state: PodSandboxState::SandboxNotready.into(),
            }]
        );

        // Container{id=1:"c", pod_sandbox_id=2:"s", image=4:{} (skipped), state=6:1}
        let c = [0x0a, 1, b'c', 0x12, 1, b's', 0x22, 0, 0x30, 1];
        let mut list = vec![0x0a, c.len() as u8];
        list.extend_from_slice(&c);
        let got = ListContainersResponse::decode(list.as_slice()).expect("decodes");
        assert_eq!(got.containers[0].pod_sandbox_id, "s");
        assert_eq!(
            got.containers[0].state,
            i32::from(ContainerState::ContainerRunning)
        );

        // ListContainersRequest{filter=1:{state=2:{state=1:1}}}
        let req = ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning.into(),
                }),
                ..Default::default()
            }),
        };
        assert_eq!(req.encode_to_vec(), vec![0x0a, 4, 0x12, 2, 0x08, 1]);
        // StopPodSandboxRequest / RemovePodSandboxRequest{pod_sandbox_id=1}
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: "x".into(),
        };
        assert_eq!(stop.encode_to_vec(), vec![0x0a, 1, b'x']);
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").ok(),
            Some(PathBuf::from("/run/containerd/containerd.sock"))
        );
        assert_eq!(
            socket_path("/run/crio/crio.sock").ok(),
            Some(PathBuf::from("/run/crio/crio.sock"))
        );
        for bad in [
            "",
            "unix://",
            "tcp://1.2.3.4:1",
            "unix://relative.sock",
            "rel.sock",
        ] {
            assert!(
                matches!(socket_path(bad), Err(CriError::InvalidEndpoint { .. })),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn missing_socket_is_an_error_not_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("absent.sock");
        let client = CriClient::new(&format!("unix://{}", sock.display()), DEFAULT_TIMEOUT)
            .expect("client builds lazily");
        let err = client.running().await.expect_err("no runtime → error");
        let msg = err.to_string();
        assert!(
            matches!(err, CriError::Unavailable { .. }),
            "unexpected variant: {msg}"
        );
        assert!(msg.contains(&sock.display().to_string()), "{msg}");
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[tokio::test]
    async fn silent_runtime_times_out() {
        // A socket that accepts but never speaks HTTP/2: the deadline must fire.
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let timeout = Duration::from_millis(300);
        let client = CriClient::new(sock.to_str().expect("utf-8 path"), timeout).expect("client");
        let err = client.running().await.expect_err("silent runtime → error");
        let msg = err.to_string();
        assert!(matches!(err, CriError::Timeout { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "runtime at unix://{} did not answer ListContainers within 300ms",
                sock.display()
            )),
            "{msg}"
        );
        hold.abort();
    }

    #[test]
    fn new_outside_runtime_is_an_error() {
        assert!(matches!(
            CriClient::new("/x.sock", DEFAULT_TIMEOUT),
            Err(CriError::NoRuntime { .. })
        ));
    }
}
