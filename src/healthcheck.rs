//! `calendar-sync healthcheck`: one `GET /healthz` to the running process
//! over a plain TCP stream (the container image has no curl, and one request
//! line needs no HTTP client).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read: `/healthz` answers a line.
const MAX_RESPONSE: u64 = 64 * 1024;

/// `Ok(())` on a 200; otherwise a one-line reason naming the address.
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    // A listener on 0.0.0.0 / [::] is reached through loopback.
    let addr = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    };
    let response = tokio::time::timeout(timeout, get(addr))
        .await
        .map_err(|_| {
            format!(
                "http://{addr}/healthz did not answer within {} s",
                timeout.as_secs()
            )
        })?
        .map_err(|e| format!("http://{addr}/healthz: {e}"))?;
    let status_line = response.lines().next().unwrap_or("");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim())
        .unwrap_or("");
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("http://{addr}/healthz answered {code}: {body}")),
        None => Err(format!(
            "http://{addr}/healthz: not an HTTP response: {status_line:?}"
        )),
    }
}

async fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
