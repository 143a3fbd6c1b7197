//! A tiny HTTP/1.1 server for `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` (liveness) is 503 while streaming with no message from the
//! server for longer than the liveness limit; `/readyz` is 200 only while
//! streaming, and otherwise names the phase in its body (e.g. "snapshot in
//! progress"). See [`crate::metrics`].
//!
//! Why hand-rolled: the process exposes exactly three `GET` endpoints, for
//! the ECS health checks and for Prometheus scraping. That needs no router,
//! no keep-alive, no bodies and no HTTP crate. The server reads the request
//! head (5 s timeout, 8 KiB cap), looks only at the request line, answers
//! with `Content-Length` and `Connection: close`, and closes. Headers are
//! never parsed, which keeps the attack surface tiny.
//!
//! Each connection runs in its own task, kept in a [`JoinSet`]; a failing
//! connection is logged at debug and never stops the server. On shutdown the
//! listener is dropped and every connection still open is aborted.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::metrics::Metrics;

/// Longest the client may take to send the request head (and to take the
/// response).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest accepted request head, request line and headers included.
const MAX_HEAD: usize = 8 * 1024;
/// After responding, read (and discard) what the client still sends for at
/// most this long / this much, so closing doesn't reset the connection
/// before the client has read the response.
const LINGER: Duration = Duration::from_secs(1);
const MAX_LINGER_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop
/// doesn't spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Binds the listener `serve` takes.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` becomes true (or its sender is dropped, since
/// then nobody can ever stop it), then aborts the connections still open
/// and returns.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve_with(listener, metrics, shutdown, IO_TIMEOUT).await
}

async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    io_timeout: Duration,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    if !*shutdown.borrow_and_update() {
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = joined {
                        if e.is_panic() {
                            tracing::warn!(error = %e, "http connection task panicked");
                        }
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let metrics = metrics.clone();
                        connections.spawn(async move {
                            if let Err(e) = handle(stream, &metrics, io_timeout).await {
                                tracing::debug!(%peer, error = %e, "http connection failed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "http accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                },
            }
        }
    }
    drop(listener);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    tracing::debug!("http server stopped");
    Ok(())
}

/// Outcome of reading a request head.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Everything up to and including the blank line.
    Complete(Vec<u8>),
    /// `MAX_HEAD` bytes without the blank line.
    TooLarge,
    /// The client closed before the head was complete.
    Closed,
}

async fn handle(mut stream: TcpStream, metrics: &Metrics, io_timeout: Duration) -> io::Result<()> {
    let timed_out =
        |what: &str| io::Error::new(io::ErrorKind::TimedOut, format!("{what} timed out"));
    let head = match timeout(io_timeout, read_head(&mut stream)).await {
        Err(_) => return Err(timed_out("reading the request head")),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::TooLarge)) => return Err(io::Error::other("request head too large")),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::Complete(head))) => head,
    };
    let response = respond(&head, metrics);
    timeout(io_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| timed_out("writing the response"))??;
    linger(&mut stream).await;
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_HEAD {
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        // The terminator may straddle two reads.
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[scan_from..]) {
            buf.truncate(scan_from + end);
            return Ok(Head::Complete(buf));
        }
    }
    Ok(Head::TooLarge)
}

/// Index just past the blank line ending a head (`\r\n\r\n`, leniently
/// also `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match &buf[i + 1..] {
            [b'\n', ..] => Some(i + 2),
            [b'\r', b'\n', ..] => Some(i + 3),
            _ => None,
        }
    })
}

/// Drains what the client still sends (a body we ignore, say), bounded, so
/// closing with unread data doesn't reset the connection under the response.
async fn linger(stream: &mut TcpStream) {
    let _ = timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut total = 0;
        while total < MAX_LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

/// Parses `METHOD SP target SP HTTP/1.x`; `None` when malformed.
fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(is_token_byte)
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(RequestLine { method, path })
}

/// `tchar` of RFC 9110.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The full response: status line, headers and, except for HEAD, body.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let req = parse_request_line(head);
    let with_body = req.as_ref().is_none_or(|r| r.method != "HEAD");
    let mut content_type = TEXT_CONTENT_TYPE;
    let (status, body) = match req {
        None => ("400 Bad Request", "bad request\n".to_owned()),
        Some(r) if !matches!(r.method, "GET" | "HEAD") => {
            ("405 Method Not Allowed", "method not allowed\n".to_owned())
        }
        Some(r) => match r.path {
            "/healthz" => match metrics.is_live() {
                Ok(()) => ("200 OK", "ok\n".to_owned()),
                Err(reason) => ("503 Service Unavailable", format!("{reason}\n")),
            },
            "/readyz" => match metrics.is_ready() {
                Ok(()) => ("200 OK", "ready\n".to_owned()),
                Err(reason) => ("503 Service Unavailable", format!("{reason}\n")),
            },
            "/metrics" => {
                content_type = METRICS_CONTENT_TYPE;
                ("200 OK", metrics.render())
            }
            _ => ("404 Not Found", "not found\n".to_owned()),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\n\
         Cache-Control: no-store\r\n\
         Allow: GET, HEAD\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests;
