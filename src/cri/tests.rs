//! Unit tests of the CRI client: the pure `running_from`, the wire format of the generated
//! messages, endpoint parsing and the error contract against sockets that fail.

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
        ..Default::default()
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
        ..Default::default()
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
/// numbering (hand-assembled from api.proto) and check every field lands where it should. This
/// guards the vendoring and generation, not prost: a wrong or mis-vendored proto fails here.
#[test]
fn wire_format_matches_upstream_field_numbers() {
    use prost::Message;
    // PodSandbox{id=1:"s", metadata=2:{name=1:"n", uid=2:"u", namespace=3:"ns", attempt=4:7},
    //            state=3:1, created_at=4:5, field 99 (newer than our proto, must be skipped)}
    let meta = [0x0a, 1, b'n', 0x12, 1, b'u', 0x1a, 2, b'n', b's', 0x20, 7];
    let mut sb = vec![0x0a, 1, b's', 0x12, meta.len() as u8];
    sb.extend_from_slice(&meta);
    sb.extend_from_slice(&[0x18, 1, 0x20, 5, 0x98, 0x06, 1]);
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
            created_at: 5,
            ..Default::default()
        }]
    );

    // Container{id=1:"c", pod_sandbox_id=2:"s", image=4:{image=1:"i"}, state=6:1}
    let c = [
        0x0a, 1, b'c', 0x12, 1, b's', 0x22, 3, 0x0a, 1, b'i', 0x30, 1,
    ];
    let mut list = vec![0x0a, c.len() as u8];
    list.extend_from_slice(&c);
    let got = ListContainersResponse::decode(list.as_slice()).expect("decodes");
    assert_eq!(got.containers[0].pod_sandbox_id, "s");
    assert_eq!(
        got.containers[0].image.as_ref().map(|i| i.image.as_str()),
        Some("i")
    );
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

#[tokio::test]
async fn raw_unary_reports_like_the_generated_calls() {
    // `unary` (callers' own messages) and the generated client share the deadline and the error
    // mapping: a missing socket is UNAVAILABLE naming the path on both.
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("absent.sock");
    let client =
        CriClient::new(sock.to_str().expect("utf-8 path"), DEFAULT_TIMEOUT).expect("client");
    let err = client
        .unary::<_, ListPodSandboxResponse>("ListPodSandbox", ListPodSandboxRequest::default())
        .await
        .expect_err("no runtime → error");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            CriError::Unavailable {
                method: "ListPodSandbox",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains(&sock.display().to_string()), "{msg}");
}
