//! Kubernetes Events on parent pods, so an operator sees what the agent did where they look
//! first (`kubectl describe pod`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use tokio::task::JoinHandle;

/// Waits between attempts to publish one Event: about 15 s in all, within which an API server
/// that restarts (or a self-hosted one handing over to its checkpoint) answers again.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// An API server that refused the Event itself (forbidden, invalid) will refuse it again; one
/// that was unreachable, overloaded or failing may not.
fn worth_retrying(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        _ => true,
    }
}

/// Publishes Kubernetes Events on parent pods so `kubectl describe pod` shows what the agent did.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    /// Events still being sent, so the agent can wait for them (bounded) before it exits: an
    /// uninstall's Events are published in its last moments (issue 11.7).
    pending: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Events {
    /// Events signed by this node's agent, so `kubectl describe` says which node acted.
    pub fn new(client: Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: "pod-checkpointer".into(),
            instance: Some(node_name.to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            pending: Arc::default(),
        }
    }

    /// Fire and forget: an Event that cannot be sent must never hold up the agent.
    pub fn publish(&self, pod: &Pod, reason: &str, action: &str, note: String) {
        self.send(pod, EventType::Normal, reason, action, note);
    }

    /// A Warning Event, for what the pod's owner must fix (a pod that cannot be checkpointed).
    pub fn warn(&self, pod: &Pod, reason: &str, action: &str, note: String) {
        self.send(pod, EventType::Warning, reason, action, note);
    }

    fn send(&self, pod: &Pod, type_: EventType, reason: &str, action: &str, note: String) {
        let reference: ObjectReference = pod.object_ref(&());
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        let sending = tokio::spawn(async move {
            let mut attempt = 0;
            while let Err(e) = recorder.publish(&event, &reference).await {
                // Some Events are published once (a refusal, a removal): a blip of the API server
                // must not lose them. client-go's broadcaster retries the same way.
                let Some(delay) = RETRY_DELAYS.get(attempt).filter(|_| worth_retrying(&e)) else {
                    tracing::info!(reason = %event.reason, error = %e, "could not publish an Event");
                    return;
                };
                tracing::debug!(reason = %event.reason, error = %e, "could not publish an Event yet");
                tokio::time::sleep(*delay).await;
                attempt += 1;
            }
        });
        if let Ok(mut pending) = self.pending.lock() {
            pending.retain(|t| !t.is_finished());
            pending.push(sending);
        }
    }

    /// Waits up to `bound` for the Events still being sent; what is left after it is dropped.
    pub async fn flush(&self, bound: Duration) {
        let pending = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        if pending.is_empty() {
            return;
        }
        let count = pending.len();
        if tokio::time::timeout(bound, futures::future::join_all(pending))
            .await
            .is_err()
        {
            tracing::debug!(count, "stopping with Events still unsent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn a_pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some("api".into());
        pod.metadata.namespace = Some("kube-system".into());
        pod.metadata.uid = Some("u1".into());
        pod
    }

    /// An Event published while the API server is briefly unavailable is sent again: a refusal
    /// is published once, and CI lost one (`collision::*` on the real node).
    #[tokio::test]
    async fn an_event_is_sent_again_after_the_api_server_dropped_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake API");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = kube::Config::new(url.parse().expect("url"));
        let events = Events::new(Client::try_from(config).expect("client"), "n1");
        events.warn(&a_pod(), "CheckpointRefused", "Refuse", "refused".into());
        let posts = tokio::time::timeout(Duration::from_secs(10), async {
            let mut posts = 0;
            // The first request is read and dropped unanswered, as by a server going away.
            while posts < 2 {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 65536];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                if String::from_utf8_lossy(&buf[..n]).contains("POST /apis/events.k8s.io") {
                    posts += 1;
                }
            }
        })
        .await;
        assert!(posts.is_ok(), "the Event was never sent again");
    }

    #[test]
    fn refusals_are_final_and_failures_are_not() {
        let status = |code| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            }))
        };
        assert!(!worth_retrying(&status(403)));
        assert!(!worth_retrying(&status(422)));
        assert!(worth_retrying(&status(429)));
        assert!(worth_retrying(&status(503)));
    }

    /// Issue 11.7: the Events of an uninstall are published in the agent's last moments, in the
    /// background; `flush` waits (bounded) until they are sent, so the exit does not drop them.
    #[tokio::test]
    async fn flush_waits_for_events_still_being_sent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake API");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let got = Arc::new(AtomicBool::new(false));
        let seen = got.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    // A slow API server: the request is read only after a while.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut buf = vec![0u8; 65536];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    if String::from_utf8_lossy(&buf[..n]).contains("POST /apis/events.k8s.io") {
                        seen.store(true, Ordering::SeqCst);
                    }
                    let _ = conn
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        let config = kube::Config::new(url.parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let events = Events::new(client, "n1");
        events.publish(&a_pod(), "CheckpointRemoved", "Remove", "uninstall".into());
        events.flush(Duration::from_secs(5)).await;
        assert!(
            got.load(Ordering::SeqCst),
            "the Event reached the API server before flush returned"
        );
    }
}
