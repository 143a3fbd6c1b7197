//! The binary's HTTP surface (`/metrics`, `/healthz`, `/readyz`) from a test:
//! a free port to serve on, a plain GET, and bounded waits for readiness or
//! for what `/metrics` shows.

use std::io::{Read, Write};
use std::time::Duration;

use super::wait_until;

/// A local TCP port nothing listens on (now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` on 127.0.0.1:`port`: status code and body, `None` when nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Waits (30 s at most) until `/readyz` answers 200; fails the test otherwise.
pub async fn wait_ready(port: u16) {
    let ready = wait_until(Duration::from_secs(30), || async {
        http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert!(
        ready,
        "/readyz never became 200: {:?}",
        http_get(port, "/readyz")
    );
}

/// Waits (at most `timeout`) until `/metrics` answers 200 with a body for
/// which `want` holds. Returns whether it did, and the last body seen.
pub async fn wait_metrics(
    port: u16,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> (bool, String) {
    let mut body = String::new();
    let ok = wait_until(timeout, || {
        let got = http_get(port, "/metrics");
        let ok = matches!(&got, Some((200, b)) if want(b));
        if let Some((_, b)) = got {
            body = b;
        }
        async move { ok }
    })
    .await;
    (ok, body)
}
