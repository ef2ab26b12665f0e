//! The accept loop with injected failures on a virtual clock, and the per-connection bounds with
//! limits short enough for a unit test. `tests/admin_server.rs` covers the production limits.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// Every event logged while the guard from [`capture`] lives, as (level, message).
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<(Level, String)>>>);

impl Logged {
    fn count(&self, level: Level, containing: &str) -> usize {
        let events = self.0.lock().expect("log lock");
        events
            .iter()
            .filter(|(l, m)| *l == level && m.contains(containing))
            .count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let level = *event.metadata().level();
        self.0.lock().expect("log lock").push((level, message.0));
    }
}

/// Captures this thread's events; `#[tokio::test]` runs the test and its tasks on one thread.
fn capture() -> (Logged, tracing::subscriber::DefaultGuard) {
    let logged = Logged::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logged.clone()));
    (logged, guard)
}

fn emfile() -> io::Error {
    io::Error::from_raw_os_error(libc::EMFILE)
}

/// A listener that plays `script`, then fails with EMFILE for ever if `fail_forever`, on a
/// virtual clock that only `pause` moves. It ends the loop (cancels `shutdown`) when the script
/// runs out, at `window`, or after 10 000 accepts (a spinning loop never moves the clock).
struct Scripted {
    script: VecDeque<io::Result<()>>,
    fail_forever: bool,
    window: Duration,
    now: Duration,
    /// Virtual time of each accept that returned.
    attempts: Vec<Duration>,
    pauses: Vec<Duration>,
    shutdown: CancellationToken,
}

impl Scripted {
    fn new(script: Vec<io::Result<()>>, fail_forever: bool, window: Duration) -> Self {
        Self {
            script: script.into(),
            fail_forever,
            window,
            now: Duration::ZERO,
            attempts: Vec::new(),
            pauses: Vec::new(),
            shutdown: CancellationToken::new(),
        }
    }
}

impl Listener for Scripted {
    type Conn = ();

    fn accept(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        let next = if self.now >= self.window || self.attempts.len() >= 10_000 {
            None
        } else {
            self.script
                .pop_front()
                .or_else(|| self.fail_forever.then(|| Err(emfile())))
        };
        match next {
            Some(_) => self.attempts.push(self.now),
            None => self.shutdown.cancel(),
        }
        async move {
            match next {
                Some(result) => result,
                None => std::future::pending().await,
            }
        }
    }

    fn pause(&mut self, wait: Duration) -> impl Future<Output = ()> + Send {
        self.pauses.push(wait);
        self.now += wait;
        std::future::ready(())
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// EMFILE for 10 s: the loop retries on a doubling back-off capped at 1 s (16 tries: at 0, 10,
/// 30, 70, 150, 310, 630, 1270 ms, then each second) and warns once, instead of spinning.
#[tokio::test]
async fn accept_errors_back_off_instead_of_spinning() {
    let (logged, _guard) = capture();
    let mut listener = Scripted::new(Vec::new(), true, Duration::from_secs(10));
    let shutdown = listener.shutdown.clone();
    let mut accepted = 0;
    accept_loop(&mut listener, &shutdown, |()| accepted += 1).await;

    assert_eq!(
        listener.attempts.len(),
        16,
        "accept attempts in 10 s of EMFILE"
    );
    assert_eq!(
        listener.pauses[..8],
        [
            ms(10),
            ms(20),
            ms(40),
            ms(80),
            ms(160),
            ms(320),
            ms(640),
            ms(1000)
        ]
    );
    assert!(listener.pauses[8..].iter().all(|p| *p == ms(1000)));
    assert_eq!(accepted, 0);
    assert_eq!(
        logged.count(Level::WARN, "cannot accept"),
        1,
        "one warning for the whole run of failures"
    );
}

/// Two runs of failures with a connection between: one warning per run, and the connection
/// resets the back-off to its start.
#[tokio::test]
async fn each_run_of_accept_errors_warns_once_and_a_connection_resets_the_back_off() {
    let (logged, _guard) = capture();
    let mut script: Vec<io::Result<()>> = (0..5).map(|_| Err(emfile())).collect();
    script.push(Ok(()));
    script.extend((0..3).map(|_| Err(emfile())));
    script.push(Ok(()));
    let mut listener = Scripted::new(script, false, Duration::from_secs(3600));
    let shutdown = listener.shutdown.clone();
    let mut accepted = 0;
    accept_loop(&mut listener, &shutdown, |()| accepted += 1).await;

    assert_eq!(accepted, 2);
    assert_eq!(
        listener.pauses,
        [
            ms(10),
            ms(20),
            ms(40),
            ms(80),
            ms(160),
            ms(10),
            ms(20),
            ms(40)
        ]
    );
    assert_eq!(logged.count(Level::WARN, "cannot accept"), 2);
    assert_eq!(logged.count(Level::INFO, "accepting connections again"), 2);
}

/// Starts `serve_on` with `limits` on a loopback port.
async fn start(limits: Limits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Health::new(Duration::from_secs(60));
    health.beat();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new().expect("metrics");
    tokio::spawn(serve_on(
        listener,
        limits,
        metrics,
        health,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

/// Everything the server sends until it closes, if it closes within `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let drain = async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, drain).await.ok()?;
    Some(got)
}

/// A client that keeps its connection busy with requests never trips the header/idle timeout;
/// the connection age closes it anyway, between responses, not in the middle of one.
#[tokio::test]
async fn a_busy_connection_is_closed_gracefully_at_its_age() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(5),
        max_age: ms(300),
        close_grace: ms(300),
        max_connections: 4,
    };
    let (addr, shutdown) = start(limits).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut served = 0;
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a busy connection outlived its age of {:?}",
            limits.max_age
        );
        if stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .is_err()
        {
            break started.elapsed();
        }
        let mut resp = Vec::new();
        let mut buf = [0u8; 256];
        // A response is the head and "ok\n"; it either comes whole or not at all.
        while !resp.ends_with(b"ok\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => resp.extend_from_slice(&buf[..n]),
            }
        }
        if resp.is_empty() {
            break started.elapsed();
        }
        assert!(
            resp.starts_with(b"HTTP/1.1 200") && resp.ends_with(b"ok\n"),
            "cut mid-response: {:?}",
            String::from_utf8_lossy(&resp)
        );
        served += 1;
        tokio::time::sleep(ms(30)).await;
    };
    assert!(served >= 2, "only {served} requests served");
    assert!(
        closed_after >= limits.max_age,
        "closed after {closed_after:?}, before its age"
    );
    shutdown.cancel();
}

/// A connection stuck mid-request (here half a header under a long header timeout) does not
/// finish when asked to close at its age; it is dropped after the grace.
#[tokio::test]
async fn a_stuck_connection_is_dropped_after_its_age_and_grace() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(30),
        max_age: ms(200),
        close_grace: ms(200),
        max_connections: 4,
    };
    let (addr, shutdown) = start(limits).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .expect("write");
    let started = Instant::now();
    assert!(
        read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "a stuck connection outlived its age and grace"
    );
    assert!(started.elapsed() >= limits.max_age);
    shutdown.cancel();
}

/// At the cap, each new connection gets a 503 and is closed; a flood of them warns once.
#[tokio::test]
async fn refusals_at_the_cap_answer_503_and_warn_once() {
    let (logged, _guard) = capture();
    let limits = Limits {
        max_connections: 1,
        ..Limits::SERVER
    };
    let (addr, shutdown) = start(limits).await;
    let _held = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..5 {
        let mut extra = TcpStream::connect(addr).await.expect("connect");
        let got = read_until_closed(&mut extra, Duration::from_secs(2))
            .await
            .expect("refused promptly");
        assert!(
            got.starts_with(b"HTTP/1.1 503"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_eq!(logged.count(Level::WARN, "connection cap"), 1);
    shutdown.cancel();
}

/// Issue 12.7: liveness is the node side's: a pass loop waiting on the API (a brownout, token
/// requests) does not fail `/healthz` while the poller beats; a poller that stops does.
#[test]
fn liveness_follows_the_poller_not_a_pass_waiting_on_the_api() {
    let stall = Duration::from_millis(50);
    let health = Health::new(stall);
    health.beat();
    health.beat_node();
    // Three stall periods in which only the poller beats: a pass stuck on the API.
    for _ in 0..3 {
        std::thread::sleep(stall);
        health.beat_node();
    }
    assert!(
        health.is_alive(),
        "a pass waiting on the API is not a dead agent"
    );
    std::thread::sleep(stall * 3);
    assert!(!health.is_alive(), "a poller silent past stall_after is");
}
