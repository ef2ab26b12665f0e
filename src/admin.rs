//! The admin HTTP server operators and the kubelet talk to: `/metrics`, `/healthz`, `/readyz`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[cfg(test)]
mod tests;

/// How often a copy of the agent whose admin port is taken tries again.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// First wait after a failed `accept`. EMFILE and ENFILE last until some descriptor is freed,
/// so retrying at once only spins a core and floods the log.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The wait doubles from [`ACCEPT_BACKOFF_MIN`] up to this, so the server is back within a
/// second of descriptors coming free.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Liveness and readiness as the agent's loops report them.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat of the main loop.
    heartbeat_ms: AtomicU64,
    ready: AtomicBool,
    /// How long the loop may stay silent before `/healthz` fails.
    stall_after: Duration,
}

impl Health {
    /// `stall_after` should be several poll intervals: the loop beats at least once per interval.
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stall_after,
        })
    }

    /// Called by the main loop each time it runs, so a stuck loop shows on `/healthz`.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Flips `/readyz` to OK once the initial sync is done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Alive while the main loop has beaten recently.
    pub fn is_alive(&self) -> bool {
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) <= self.stall_after
    }
}

/// Serves the admin endpoints until `shutdown` fires. On a host-network node the DaemonSet pod
/// and its static copy share the port: the one that finds it taken keeps trying, and takes over
/// when the other goes. Any other bind error is returned at once, as a clear start-up failure.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut told = false;
    let mut listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !told {
                    tracing::info!(addr = %addr, "admin port in use (the other copy of the agent?); retrying until it is free");
                    told = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(BIND_RETRY) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    tracing::info!(addr = %listener.local_addr()?, "admin server listening");
    accept_loop(&mut listener, &shutdown, |stream| {
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&req, &metrics, &health);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    })
    .await;
    Ok(())
}

/// Where the accept loop gets connections, and the clock it backs off on. A trait so the tests
/// can make `accept` fail and count the waits without real time (tokio's paused clock needs its
/// `test-util` feature, which this crate does not enable).
trait Listener {
    type Conn;
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Conn>> + Send;
    fn pause(&mut self, wait: Duration) -> impl Future<Output = ()> + Send;
}

impl Listener for TcpListener {
    type Conn = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }

    async fn pause(&mut self, wait: Duration) {
        tokio::time::sleep(wait).await;
    }
}

/// Accepts until `shutdown`, handing each connection to `on_conn`. When `accept` fails (EMFILE
/// and ENFILE above all, which last until a descriptor is freed) it waits before the next try,
/// doubling from [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`], and warns once per run of
/// failures rather than once per failure; the first connection after a run resets both.
async fn accept_loop<L: Listener>(
    listener: &mut L,
    shutdown: &CancellationToken,
    mut on_conn: impl FnMut(L::Conn),
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(conn) => {
                if failures > 0 {
                    tracing::info!(failures, "admin server accepting connections again");
                    failures = 0;
                    backoff = ACCEPT_BACKOFF_MIN;
                }
                on_conn(conn);
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "admin server cannot accept connections (out of descriptors?); backing off");
                }
                failures += 1;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = listener.pause(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

fn route(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, metrics.render());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" if health.is_alive() => text(StatusCode::OK, "ok\n".into()),
        "/healthz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "main loop stalled\n".into(),
        ),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "initial sync not done\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
