//! The admin HTTP server operators and the kubelet talk to: `/metrics`, `/healthz`, `/readyz`.

//!
//! The port is open to the whole node network (the agent runs with `hostNetwork`), so any pod
//! can connect. The server bounds what a client can hold, because the descriptors it would
//! exhaust are the ones the agent needs in the hour the API server is away: a header read
//! timeout (which hyper also applies to idle keep-alive connections), an overall connection age,
//! a cap on concurrent connections, and a back-off when `accept` fails (EMFILE) instead of a
//! spinning loop that floods the log.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[cfg(test)]
mod tests;

/// How often a bind that found the port taken tries again within [`PORT_TAKEOVER`].
const BIND_RETRY: Duration = Duration::from_millis(200);

/// How long the new lock holder waits for the port of a holder that has just gone. Its socket
/// closes as its process exits, which is also what frees the lock, so this is ample.
const PORT_TAKEOVER: Duration = Duration::from_secs(5);

/// How long a client has to send a whole request header. hyper runs the same timer while a
/// keep-alive connection waits for its next request, so this is the idle bound as well. The
/// kubelet and Prometheus send a header in one packet; 5 s is generous for them and cuts a
/// slowloris (half a header, then silence) off before it can pile up connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// After this long a connection is asked to close once its current response is out. It bounds
/// what the header timeout does not: a client that keeps one connection busy with requests
/// spaced just under the timeout, or one that sends a body or reads its response at a trickle.
/// Scrapers just reconnect.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);

/// How long a connection past [`MAX_CONNECTION_AGE`] gets to finish its response before it is
/// dropped outright (a client that never reads would otherwise keep it).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// At most this many admin connections are served at once. The real clients (kubelet probes,
/// one or two Prometheus scrapers, an operator's curl) need a handful; 64 is far above that and
/// a small share of the agent's descriptor limit, which its runtime, API server and state-file
/// work need more. Past the cap the newest connection is refused (answered 503 if its socket
/// takes it, and closed) rather than left in the listen backlog: the connections being served
/// keep going, the refused client learns at once, and each held connection is freed within the
/// timeouts above, after which `/healthz` answers again.
const MAX_CONNECTIONS: usize = 64;

/// First wait after a failed `accept`. EMFILE and ENFILE last until some descriptor is freed,
/// so retrying at once only spins a core and floods the log.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// The wait doubles from [`ACCEPT_BACKOFF_MIN`] up to this, so the server is back within a
/// second of descriptors coming free.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one "refusing connections" warning per this long, with a count, so a flood at the
/// cap does not become a flood in the log.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

/// What the server bounds per connection; [`Limits::SERVER`] in production, shorter in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    max_age: Duration,
    close_grace: Duration,
    max_connections: usize,
}

impl Limits {
    const SERVER: Limits = Limits {
        header_read_timeout: HEADER_READ_TIMEOUT,
        max_age: MAX_CONNECTION_AGE,
        close_grace: CLOSE_GRACE,
        max_connections: MAX_CONNECTIONS,
    };
}

/// How much longer than `stall_after` the pass loop may stay silent: a pass may wait on the API
/// (TokenRequests, each bounded by the request client's timeouts) during a brownout, and
/// liveness must not depend on the API (issue 12.7): restarting then would only ask for every
/// token again. A pass loop silent past this is stuck whatever the API does.
pub const PASS_API_ALLOWANCE: Duration = Duration::from_secs(300);

/// Liveness and readiness as the agent's loops report them. Liveness means "the node side is
/// alive": the poller beats every poll interval whatever the API does, and the pass loop beats
/// at every pass, allowed [`PASS_API_ALLOWANCE`] more for passes waiting on the API.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last heartbeat of the main loop.
    heartbeat_ms: AtomicU64,
    /// Milliseconds since `started` at the last poll of the node sources.
    node_ms: AtomicU64,
    ready: AtomicBool,
    /// How long the poller may stay silent before `/healthz` fails.
    stall_after: Duration,
}

impl Health {
    /// `stall_after` should be several poll intervals: the loop beats at least once per interval.
    pub fn new(stall_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            node_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stall_after,
        })
    }

    /// Called by the main loop each time it runs, so a stuck loop shows on `/healthz`.
    pub fn beat(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Called by the poller at every poll, answered or not.
    pub fn beat_node(&self) {
        // At least 1, so a beat in the first millisecond still tells from "never beaten".
        let ms = (self.started.elapsed().as_millis() as u64).max(1);
        self.node_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether the poller has beaten at least once.
    pub fn node_beaten(&self) -> bool {
        self.node_ms.load(Ordering::Relaxed) > 0
    }

    /// Flips `/readyz` to OK once the initial sync is done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Alive while the poller has beaten within `stall_after` and the pass loop within
    /// `stall_after` plus [`PASS_API_ALLOWANCE`].
    pub fn is_alive(&self) -> bool {
        let silent = |beat: &AtomicU64| {
            let last = Duration::from_millis(beat.load(Ordering::Relaxed));
            self.started.elapsed().saturating_sub(last)
        };
        silent(&self.node_ms) <= self.stall_after
            && silent(&self.heartbeat_ms) <= self.stall_after + PASS_API_ALLOWANCE
    }
}

/// Binds the admin address and serves until `shutdown` fires: [`bind`] then [`serve_listener`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = bind(addr).await?;
    serve_listener(listener, metrics, health, shutdown).await;
    Ok(())
}

/// Binds the admin address. Only the copy holding the node lock binds it (issue 12.4), so the
/// port is never "the other copy of me" for long: the only copy of ours that may still have it is
/// a holder that has just gone, whose socket closes with its process, within moments of the lock
/// coming free. So `AddrInUse` is retried for [`PORT_TAKEOVER`] and then reported as what it is, a
/// foreign program on our port (issue 12.5), rather than waited on forever while that program
/// answers the probes and scrapes meant for us.
///
/// An unspecified IPv6 address (`[::]`) is bound dual-stack (IPv4 through v4-mapped addresses),
/// and falls back to `0.0.0.0` on the same port where IPv6 is off on the node (issue 12.6).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let until = Instant::now() + PORT_TAKEOVER;
    loop {
        match bind_once(addr) {
            Ok(l) => {
                tracing::info!(addr = %l.local_addr()?, "admin server listening");
                return Ok(l);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < until => {
                tokio::time::sleep(BIND_RETRY).await;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "admin address {addr} is in use by another program: this copy holds the node lock, and copies of the agent bind the port only while holding it, so it is not one of ours; pick a free port (--admin-addr, chart value adminPort)"
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("admin address {addr}: {e}"),
                ));
            }
        }
    }
}

/// One attempt at [`bind`].
fn bind_once(addr: SocketAddr) -> io::Result<TcpListener> {
    if let SocketAddr::V6(v6) = addr
        && v6.ip().is_unspecified()
    {
        match bind_dual_stack(addr) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
                ) =>
            {
                tracing::info!(error = %e, "no IPv6 on this node: the admin server listens on IPv4 only");
                let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
                return bind_plain(v4);
            }
            other => return other,
        }
    }
    bind_plain(addr)
}

/// A listening socket with `SO_REUSEADDR` (as `TcpListener::bind` sets it).
fn bind_plain(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// `[::]` with `IPV6_V6ONLY` off, so IPv4 clients reach it too whatever the node's
/// `net.ipv6.bindv6only` says.
fn bind_dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: setsockopt on a descriptor `socket` owns, reading one c_int we pass by pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&raw const off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Where a local client (the exec probe) reaches a server bound to `bound`: loopback for an
/// unspecified address.
pub fn local_address(bound: SocketAddr) -> SocketAddr {
    match bound {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// Serves the admin endpoints on a bound listener until `shutdown` fires. Connections are
/// bounded as the module documentation says; on `shutdown` the server stops accepting and the
/// connections still open finish within those bounds.
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    serve_on(listener, Limits::SERVER, metrics, health, shutdown).await;
}

/// Serves on a bound listener until `shutdown`, holding at most `limits.max_connections`.
async fn serve_on(
    mut listener: TcpListener,
    limits: Limits,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = Refusals::default();
    accept_loop(&mut listener, &shutdown, |stream| {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refusals.refused(limits.max_connections);
            refuse(stream);
            return;
        };
        let metrics = metrics.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = route(&req, &metrics, &health);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            serve_connection(stream, svc, limits).await;
            drop(permit);
        });
    })
    .await;
}

/// Closes a connection past the cap, with a 503 if the socket takes it without waiting.
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] =
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
    // Best effort: never wait on a client we are turning away.
    let _ = stream.try_write(BUSY);
}

/// Counts connections refused at the cap and warns at most once per [`REFUSAL_WARN_EVERY`].
#[derive(Debug, Default)]
struct Refusals {
    last_warned: Option<Instant>,
    since_warned: u64,
}

impl Refusals {
    fn refused(&mut self, cap: usize) {
        self.since_warned += 1;
        if self
            .last_warned
            .is_none_or(|at| at.elapsed() >= REFUSAL_WARN_EVERY)
        {
            tracing::warn!(
                cap,
                refused = self.since_warned,
                "admin server at its connection cap; refusing new connections"
            );
            self.last_warned = Some(Instant::now());
            self.since_warned = 0;
        }
    }
}

/// Serves one connection within `limits`: hyper's header read (and keep-alive idle) timeout,
/// then a graceful close at `max_age` and a hard one `close_grace` later.
async fn serve_connection<I, S>(io: I, svc: S, limits: Limits)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = std::convert::Infallible,
        >,
{
    let mut builder = http1::Builder::new();
    // Without a timer hyper enforces no timeout at all.
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = tokio::time::sleep(limits.max_age) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.close_grace, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::debug!("admin connection dropped: past its age and did not finish");
                    return;
                }
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
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
            "node side stalled (poller or pass loop)\n".into(),
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
