//! The exec probe (`pod-checkpointer probe live|ready|startup`), run by the kubelet inside the
//! agent's container, for the DaemonSet pod and its static copy alike (issue 12.4).
//!
//! Why an exec probe and not an HTTP one: both copies share the node's network, so an `httpGet`
//! probe reaches whichever process holds the port, not the container it was meant for. A second
//! port for the standby has the same flaw (the probe has one fixed port). An exec probe runs in
//! the container it checks, works out that copy's [`Identity`], and asks the right thing: the
//! holder's own admin server (named in the lock file) when this copy holds the node lock, or this
//! copy's standby heartbeat file otherwise. The admin port itself is bound only by the lock holder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use super::{Holder, Identity, StandbyRecord, standby_path};

/// How long the probe waits for the holder's admin server; the kubelet's own probe timeout
/// (the chart's `timeoutSeconds`) bounds the whole process too.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// Which probe the kubelet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeKind {
    /// The copy is alive: the holder's node side (poller and pass loop) beats, or the standby
    /// loop beats.
    Live,
    /// The holder finished its first sync; a standby is ready, so rollouts do not wait on it.
    Ready,
    /// The copy has started: the holder serves, or the standby beats. Gates liveness, so a slow
    /// first pass (an API brownout at start) is not a restart.
    Startup,
}

/// `Ok(what was seen)` when the probe passes, `Err(why not)` otherwise.
pub fn probe(lock_path: &Path, kind: ProbeKind) -> Result<String, String> {
    let me = Identity::current();
    if let Some(holder) = Holder::read(lock_path).filter(|h| h.instance == me.as_str()) {
        let Some(addr) = holder.admin else {
            return Err("holding the node lock; admin server not bound yet".into());
        };
        let path = match kind {
            ProbeKind::Live | ProbeKind::Startup => "/healthz",
            ProbeKind::Ready => "/readyz",
        };
        return match ask(&addr, path) {
            Ok((200, _)) => Ok(format!("holding the node lock; {path} on {addr}: ok")),
            Ok((status, body)) => Err(format!(
                "holding the node lock; {path} on {addr}: {status} {}",
                body.trim()
            )),
            Err(e) => Err(format!(
                "holding the node lock; {path} on {addr} does not answer: {e}"
            )),
        };
    }
    let file = standby_path(lock_path, &me);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "not the lock holder, and no standby heartbeat ({}): {e}",
            file.display()
        )
    })?;
    let record: StandbyRecord = serde_json::from_str(&text)
        .map_err(|e| format!("standby heartbeat {} unreadable: {e}", file.display()))?;
    if record.instance != me.as_str() {
        return Err(format!(
            "standby heartbeat {} names another copy",
            file.display()
        ));
    }
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .unwrap_or_default();
    let limit = Duration::from_millis(record.stall_after_ms);
    if age > limit {
        return Err(format!(
            "standing by, but the standby loop last beat {}s ago (limit {}s)",
            age.as_secs(),
            limit.as_secs()
        ));
    }
    Ok("standing by (another copy holds the node lock); alive".into())
}

/// A plain HTTP/1.0 GET, status and body.
fn ask(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("address {addr}: {e}")))?;
    let mut s = TcpStream::connect_timeout(&addr, ASK_TIMEOUT)?;
    s.set_read_timeout(Some(ASK_TIMEOUT))?;
    s.set_write_timeout(Some(ASK_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}
