use super::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("test pod parses")
}

fn running_pod(ns: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": ns},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}
        ]}
    })
}

#[test]
fn running_needs_phase_and_a_running_container() {
    let pods = [
        pod(running_pod("ns", "up")),
        // phase Running but every container waiting (crash loop): not running
        pod(json!({
            "metadata": {"name": "crashloop", "namespace": "ns"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        })),
        // pending, image pulling
        pod(json!({
            "metadata": {"name": "pending", "namespace": "ns"},
            "status": {"phase": "Pending"}
        })),
        // running only through a sidecar (restartable init container)
        pod(json!({
            "metadata": {"name": "sidecar", "namespace": "ns"},
            "status": {"phase": "Running", "initContainerStatuses": [
                {"name": "s", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}}
            ]}
        })),
        // succeeded with a stale running state must not count
        pod(json!({
            "metadata": {"name": "done", "namespace": "ns"},
            "status": {"phase": "Succeeded", "containerStatuses": [
                {"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {}}}
            ]}
        })),
        // no status at all
        pod(json!({"metadata": {"name": "new", "namespace": "ns"}})),
    ];
    assert_eq!(
        running_from_status(&pods),
        Running::from([PodKey::new("ns", "up"), PodKey::new("ns", "sidecar")])
    );
}

#[test]
fn body_shapes() {
    let empty = parse_pod_list(r#"{"kind":"PodList","apiVersion":"v1","items":null}"#)
        .expect("null items is an empty list");
    assert!(empty.pods.is_empty() && empty.unparsable.is_empty());
    assert!(parse_pod_list("not json").is_err());
    assert!(parse_pod_list(r#"{"kind":"Status"}"#).is_err());
    assert!(parse_pod_list(r#"{"items":{}}"#).is_err());
}

/// Serves one canned HTTP/1.1 response per connection on 127.0.0.1 and hands each request head
/// to the test. Returns the base URL.
async fn serve(
    body: String,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (format!("http://{addr}"), rx, task)
}

#[tokio::test]
async fn pods_from_a_plain_http_kubelet_skip_bad_items() {
    let body = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": [
            running_pod("kube-system", "kube-apiserver"),
            // malformed: containers must be a list
            {"metadata": {"name": "broken", "namespace": "kube-system"},
             "spec": {"containers": "not-a-list"}},
            running_pod("default", "web"),
        ]
    })
    .to_string();
    let (url, mut heads, server) = serve(body).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("write token");
    let mut cfg = KubeletConfig::new(&url);
    cfg.token_file = Some(token.clone());
    let client = KubeletClient::new(&cfg).expect("client");

    let got = client.pods().await.expect("pods");
    let names: Vec<_> = got
        .pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(names, ["kube-apiserver", "web"]);
    assert_eq!(got.unparsable.len(), 1, "{:?}", got.unparsable);
    assert!(
        got.unparsable[0].starts_with("items[1] (kube-system/broken): "),
        "{:?}",
        got.unparsable
    );
    assert_eq!(
        running_from_status(&got.pods),
        Running::from([
            PodKey::new("kube-system", "kube-apiserver"),
            PodKey::new("default", "web")
        ])
    );

    let head = heads
        .recv()
        .await
        .expect("request seen")
        .to_ascii_lowercase();
    assert!(head.starts_with("get /pods http/1.1\r\n"), "{head}");
    assert!(head.contains("authorization: bearer s3cret\r\n"), "{head}");

    // A rotated token is used by the very next request.
    std::fs::write(&token, "rotated").expect("rotate token");
    client.pods().await.expect("pods after rotation");
    let head = heads
        .recv()
        .await
        .expect("request seen")
        .to_ascii_lowercase();
    assert!(head.contains("authorization: bearer rotated\r\n"), "{head}");
    server.abort();
}

#[tokio::test]
async fn silent_kubelet_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            held.push(c);
        }
    });
    let mut cfg = KubeletConfig::new(format!("http://{addr}"));
    cfg.timeout = Duration::from_millis(300);
    let err = KubeletClient::new(&cfg)
        .expect("client")
        .pods()
        .await
        .expect_err("no answer → error");
    let msg = err.to_string();
    // kube's own read timeout and ours race; both must name the kubelet.
    assert!(msg.contains(&format!("http://{addr}")), "{msg}");
    assert!(
        matches!(
            err,
            KubeletError::Timeout { .. } | KubeletError::Request { .. }
        ),
        "{msg}"
    );
    hold.abort();
}

#[tokio::test]
async fn refused_connection_names_the_kubelet() {
    // Bind then drop to get a port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let cfg = KubeletConfig::new(format!("http://{addr}/"));
    let err = KubeletClient::new(&cfg)
        .expect("client")
        .pods()
        .await
        .expect_err("refused → error");
    let msg = err.to_string();
    assert!(matches!(err, KubeletError::Request { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("GET http://{addr}/pods failed: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn bad_configs_are_refused() {
    for url in ["127.0.0.1:10250", "ftp://x", "not a url"] {
        assert!(
            matches!(
                KubeletClient::new(&KubeletConfig::new(url)),
                Err(KubeletError::InvalidConfig { .. })
            ),
            "{url}"
        );
    }
    let mut cfg = KubeletConfig::new("https://127.0.0.1:10250");
    cfg.client_cert = Some("/nonexistent/cert.pem".into());
    assert!(matches!(
        KubeletClient::new(&cfg),
        Err(KubeletError::InvalidConfig { .. })
    ));
    cfg.client_key = Some("/nonexistent/key.pem".into());
    let err = KubeletClient::new(&cfg).expect_err("missing cert files");
    assert!(matches!(err, KubeletError::Client { .. }), "{err}");
    let mut cfg = KubeletConfig::new("https://127.0.0.1:10250");
    cfg.token_file = Some("/nonexistent/token".into());
    let err = KubeletClient::new(&cfg).expect_err("missing token file");
    assert!(matches!(err, KubeletError::Client { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/token"), "{err}");
    let mut cfg = KubeletConfig::new("https://127.0.0.1:10250");
    cfg.ca_file = Some("/nonexistent/ca.pem".into());
    let err = KubeletClient::new(&cfg).expect_err("missing CA file");
    let msg = err.to_string();
    assert!(
        msg.contains("127.0.0.1:10250") && msg.contains("/nonexistent/ca.pem"),
        "{msg}"
    );
}

/// The original's problem 15: a new HTTP transport per poll leaked a descriptor each time. The
/// client is built once and keeps its connection: polls over a keep-alive kubelet reuse one.
#[tokio::test]
async fn repeated_polls_reuse_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let body = json!({"kind": "PodList", "apiVersion": "v1", "items": []}).to_string();
    let _server = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    head.clear();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                        body.len(),
                        body
                    );
                    if conn.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let client = KubeletClient::new(&KubeletConfig::new(format!("http://{addr}"))).expect("client");
    for _ in 0..20 {
        client.pods().await.expect("pods");
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection for every poll"
    );
}
