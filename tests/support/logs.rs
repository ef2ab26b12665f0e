//! Captures what the agent logs on the test's thread, to count lines by level and content.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

/// Every event logged while the guard from [`capture`] lives, as (level, message and fields).
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

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let level = *event.metadata().level();
        self.0.lock().expect("log lock").push((level, fields.0));
    }
}

/// Captures this thread's events; `#[tokio::test]` runs the test and its tasks on one thread.
pub fn capture() -> (Logged, tracing::subscriber::DefaultGuard) {
    let logged = Logged::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(logged.clone()));
    (logged, guard)
}
