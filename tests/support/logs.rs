//! Captures what the agent logs on the test's thread, to count lines by level and content.
//!
//! One global subscriber, installed once, hands each event to the capture of the thread that
//! logged it. A per-thread `set_default` subscriber would be simpler, but tracing caches each
//! call site's interest process-wide: a test on another thread that hits a call site first, with
//! no subscriber, can leave it switched off for everyone (CI lost an event that way).

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, Once};

use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

/// Every event logged on this thread while the guard from [`capture`] lives.
#[derive(Clone, Default)]
pub struct Logged(Arc<Mutex<Vec<(Level, String)>>>);

impl Logged {
    /// Events at `level` whose message or fields contain `text`.
    pub fn count(&self, level: Level, text: &str) -> usize {
        let events = self.0.lock().expect("log lock");
        events
            .iter()
            .filter(|(l, m)| *l == level && m.contains(text))
            .count()
    }
}

thread_local! {
    static CAPTURE: RefCell<Option<Logged>> = const { RefCell::new(None) };
}

/// The global layer: files each event with the capture of the thread that logged it, if any.
struct ToThreadCapture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ToThreadCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        CAPTURE.with(|capture| {
            if let Some(logged) = capture.borrow().as_ref() {
                let mut fields = Fields(String::new());
                event.record(&mut fields);
                let level = *event.metadata().level();
                logged.0.lock().expect("log lock").push((level, fields.0));
            }
        });
    }
}

/// Ends the capture on drop.
pub struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

/// Captures this thread's events; `#[tokio::test]` runs the test and its tasks on one thread.
pub fn capture() -> (Logged, Guard) {
    static GLOBAL: Once = Once::new();
    GLOBAL.call_once(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(ToThreadCapture),
        )
        .expect("no other global subscriber in a test binary");
    });
    // A call site first hit before the global subscriber existed may have cached "never".
    tracing::callsite::rebuild_interest_cache();
    let logged = Logged::default();
    CAPTURE.with(|capture| *capture.borrow_mut() = Some(logged.clone()));
    (logged, Guard(()))
}
