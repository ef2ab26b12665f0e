//! The accept loop with injected failures on a virtual clock.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::Mutex;

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
