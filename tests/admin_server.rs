//! The admin server as any pod on the node network meets it: a client that stalls mid-header or
//! sits idle is cut off, a flood of connections is capped, and `/healthz` still answers once the
//! flood is gone. Real sockets on 127.0.0.1 and the production limits, so these take a few
//! seconds of wall time (the 5 s header timeout), in parallel.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pod_checkpointer::admin::{self, Health};
use pod_checkpointer::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The header read timeout the server promises (`admin::HEADER_READ_TIMEOUT`, private).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The connection cap the server promises (`admin::MAX_CONNECTIONS`, private).
const MAX_CONNECTIONS: usize = 64;
/// Slack for a loaded CI machine on top of a server-side deadline.
const SLACK: Duration = Duration::from_secs(3);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts `admin::serve` on a free loopback port and waits until it accepts.
async fn start() -> Server {
    // `serve` binds by itself: find a free port, let go of it, and hand it over.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    let metrics = Metrics::new().expect("metrics");
    let health = Health::new(Duration::from_secs(60));
    health.beat();
    health.set_ready();
    let shutdown = CancellationToken::new();
    tokio::spawn(admin::serve(addr, metrics, health, shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "admin server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server { addr, shutdown }
}

/// Reads whatever the server sends until it closes the connection (EOF or reset). Returns how
/// long that took, or `None` if the connection is still open after `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let drain = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, drain)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Sends one keep-alive `GET` and reads its response (the admin bodies are short and end in a
/// newline after `Content-Length`), leaving the connection open.
async fn get_keep_alive(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "server closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .expect("content-length");
                if body.len() >= len {
                    return text.into_owned();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s")
}

/// One `GET` on a fresh connection with `Connection: close`; the status line, or the I/O error.
async fn get_fresh(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response"))??;
    let text = String::from_utf8_lossy(&got);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// Slowloris: half a request header, then silence. Without a header read timeout the
/// connection (and its descriptor) is held for as long as the client likes.
#[tokio::test]
async fn half_a_header_is_cut_off_after_the_header_read_timeout() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .expect("write");
    let took = closed_within(&mut stream, HEADER_READ_TIMEOUT + SLACK).await;
    assert!(
        took.is_some(),
        "a stalled header still holds its connection after {:?}",
        HEADER_READ_TIMEOUT + SLACK
    );
}

/// A keep-alive connection that goes quiet after a request is closed, instead of holding a
/// descriptor for ever.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Two requests on one connection: keep-alive works, so the close below is the idle bound.
    for _ in 0..2 {
        let resp = get_keep_alive(&mut stream, "/healthz").await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let took = closed_within(&mut stream, HEADER_READ_TIMEOUT + SLACK).await;
    assert!(
        took.is_some(),
        "an idle keep-alive connection is still open after {:?}",
        HEADER_READ_TIMEOUT + SLACK
    );
}

/// Past the cap, new connections are closed at once (newest refused) rather than each taking a
/// descriptor; those already held are still served, and once they go `/healthz` answers again.
#[tokio::test]
async fn connections_past_the_cap_are_refused_and_healthz_answers_once_they_go() {
    let server = start().await;
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The listener accepts in order, so these are the ones past the cap.
    for i in 0..4 {
        let mut extra = TcpStream::connect(server.addr).await.expect("connect");
        let took = closed_within(&mut extra, Duration::from_secs(2)).await;
        assert!(
            took.is_some(),
            "connection {} past the cap of {MAX_CONNECTIONS} is still open after 2 s",
            i + 1
        );
    }
    // The held ones were accepted and are served.
    let resp = get_keep_alive(&mut held[0], "/healthz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match get_fresh(server.addr, "/healthz").await {
            Ok(status) if status.starts_with("HTTP/1.1 200") => break,
            other => assert!(
                Instant::now() < deadline,
                "/healthz does not answer after the flood went: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
