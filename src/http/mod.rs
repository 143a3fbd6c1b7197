//! The HTTP/1.1 endpoint for `/healthz`, `/readyz` and `/metrics`, on hyper.
//!
//! `/healthz` (liveness) is 503 while streaming with no message from the
//! server for longer than the liveness limit; `/readyz` is 200 only while
//! streaming, and otherwise names the phase in its body (e.g. "snapshot in
//! progress"). See [`crate::metrics`]. `GET` and `HEAD` only (else 405 with
//! `Allow`); an unknown path is 404; a request hyper cannot parse, or whose
//! target is not a path (`*`, `host:port`, `http://…`), is 400.
//!
//! hyper parses and writes HTTP; what is ours is the routing ([`respond`])
//! and what one client may hold, because the listener is reachable by
//! whatever can reach the task ([`Limits`]):
//! - at most [`MAX_CONNECTIONS`] connections are served at once. When all
//!   slots are taken, one more connection is accepted, and the connection
//!   that has waited longest for its request head is closed to make room
//!   for it, once it has had [`EVICTION_GRACE`] (0.1 s) to send it. A
//!   connection whose head is in is being answered and is never closed for
//!   another (a moment: the answers, a few KiB, fit in the socket buffers;
//!   at most [`CONNECTION_TIMEOUT`]); while all are, the new one waits.
//!   So an idle connection keeps its slot only while nobody else wants it,
//!   however fast its client reopens it: a health check, which sends its
//!   request at once, is let in within 0.1 s per [`MAX_CONNECTIONS`]
//!   connections queued ahead of it (0.3 s behind a full backlog), not one
//!   [`HEAD_TIMEOUT`] per slot's worth, and is not closed once its head is
//!   in. Evicting, rather than keeping slots for connections that have sent
//!   their head (a head is only known once read, in a slot) or admitting
//!   only after a short head deadline (an idle client would still hold a
//!   slot that long each time, and a slow one would be cut off even when
//!   nobody else wants its slot). The grace also bounds the churn a flood
//!   causes (at most 640 evictions a second), and a slot is given out again
//!   only once the evicted connection's task has ended, so tasks and
//!   sockets stay bounded;
//! - beyond that one, connections wait in the kernel's listen backlog and
//!   are then served with the request they sent meanwhile. Waiting rather
//!   than refusing: the ECS health check may be one of them, and a refused
//!   check is a failed one (3 in a row restart the task). The backlog holds
//!   128 (tokio's `bind` asks for what std does); beyond that Linux drops
//!   the connection attempt and the client retries its SYN a second later,
//!   so a client keeping more than 64 + 128 connections coming can still
//!   delay a check (the backlog's limit, not the cap's);
//! - one request per connection, answered with `Connection: close` as
//!   before: the clients (Prometheus every 15 s or more, the `healthcheck`
//!   subcommand) gain nothing from keep-alive, and a kept-alive idle
//!   connection would hold a slot between requests;
//! - the request head must arrive within [`HEAD_TIMEOUT`] of the connection
//!   being accepted (hyper's `header_read_timeout`, a total, not per read),
//!   and be at most [`MAX_HEAD`] bytes (larger: hyper answers 431);
//! - the whole connection, head read and response write, is dropped after
//!   [`CONNECTION_TIMEOUT`] (hyper has no write timeout: this is the bound
//!   on a client that does not read its answer).
//!
//! Each connection runs in its own task, kept in a [`JoinSet`] whose size is
//! the slot count; its service marks the slot once hyper has the request
//! head. A failing connection is logged at debug and never stops the
//! server. On shutdown the listener is dropped and every connection
//! still open is aborted (an answer cut short is one scrape or health check
//! lost while the process is stopping anyway).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep_until, Instant};

use crate::metrics::Metrics;

/// Connections served at once; beyond it, one more is accepted and waits
/// (see [`EVICTION_GRACE`]), the rest in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Longest the client may take, from being accepted, to send the request
/// head while no other connection wants its slot (else [`EVICTION_GRACE`]).
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a connection lives: the head within [`HEAD_TIMEOUT`], then at
/// least 5 s to take the response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(8);
/// Largest accepted request head, request line and headers included
/// (hyper's read buffer; 8 KiB is also its smallest).
const MAX_HEAD: usize = 8 * 1024;
/// Least time a connection without its request head keeps its slot when
/// the cap is full and another connection waits: far more than a client
/// that sends its request at once needs (microseconds over loopback, one
/// round trip at most over the network), short enough that a flood of
/// idle connections still lets [`MAX_CONNECTIONS`] / 0.1 s = 640 new
/// connections a second in.
const EVICTION_GRACE: Duration = Duration::from_millis(100);
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
    serve_with(listener, metrics, shutdown, Limits::DEFAULT).await
}

/// What one client may hold; the module doc says why these.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections served at once.
    connections: usize,
    /// From accept to the end of the request head.
    head: Duration,
    /// From accept to the last byte of the response.
    connection: Duration,
    /// Least time a connection without its request head keeps its slot
    /// against a connection waiting for one.
    grace: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        connections: MAX_CONNECTIONS,
        head: HEAD_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
        grace: EVICTION_GRACE,
    };
}

async fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD);
    // An evicted connection counts until its task has ended, so there are
    // never more tasks (or sockets) than slots.
    let mut connections = JoinSet::new();
    // The connections served, oldest first; an evicted one leaves at once.
    let mut slots: VecDeque<Slot> = VecDeque::new();
    // Accepted while every slot was taken, served as soon as one frees.
    let mut waiting: Option<(TcpStream, SocketAddr)> = None;
    if !*shutdown.borrow_and_update() {
        loop {
            // When the oldest connection without a head has had its grace.
            let mut evict_at = None;
            if let Some((stream, peer)) = waiting.take() {
                if connections.len() < limits.connections {
                    let head = Arc::new(AtomicBool::new(false));
                    let conn = connection(
                        stream,
                        &http,
                        metrics.clone(),
                        Arc::clone(&head),
                        limits.connection,
                    );
                    let abort = connections.spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "http connection failed");
                        }
                    });
                    slots.push_back(Slot {
                        peer,
                        since: Instant::now(),
                        head,
                        abort,
                    });
                } else {
                    // One eviction at a time: none is under way while every
                    // task counted is still a slot.
                    if connections.len() == slots.len() {
                        evict_at = evict(&mut slots, limits.grace);
                    }
                    waiting = Some((stream, peer));
                }
            }
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
                // Reaped before accepting, so `len` counts running tasks.
                Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                    let id = match &joined {
                        Ok((id, ())) => *id,
                        Err(e) => e.id(),
                    };
                    slots.retain(|slot| slot.abort.id() != id);
                    if let Err(e) = joined {
                        if e.is_panic() {
                            tracing::warn!(error = %e, "http connection task panicked");
                        }
                    }
                }
                () = sleep_until(evict_at.unwrap_or_else(Instant::now)), if evict_at.is_some() => {}
                accepted = listener.accept(), if waiting.is_none() => {
                    match accepted {
                        Ok(accepted) => waiting = Some(accepted),
                        Err(e) => {
                            tracing::debug!(error = %e, "http accept failed");
                            tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        }
                    }
                }
            }
        }
    }
    drop(listener);
    drop(waiting);
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    tracing::debug!("http server stopped");
    Ok(())
}

/// A connection being served.
struct Slot {
    peer: SocketAddr,
    /// When it was accepted into the slot.
    since: Instant,
    /// Set once hyper has the whole request head.
    head: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// Closes the connection that has waited longest for its request head (the
/// one that has had the most time to send it) if it has had `grace`, else
/// returns when it will have; `None` also when every connection has its
/// head: those are being answered, and are left alone.
fn evict(slots: &mut VecDeque<Slot>, grace: Duration) -> Option<Instant> {
    let oldest = slots
        .iter()
        .position(|slot| !slot.head.load(Ordering::Relaxed))?;
    let at = slots[oldest].since + grace;
    if at > Instant::now() {
        return Some(at);
    }
    let slot = slots.remove(oldest)?;
    slot.abort.abort();
    tracing::debug!(peer = %slot.peer, "http connection without a request head closed for a new one");
    None
}

/// Serves one connection (one request), for at most `limit`; sets `head`
/// once the request head is in.
fn connection(
    stream: TcpStream,
    http: &http1::Builder,
    metrics: Metrics,
    head: Arc<AtomicBool>,
    limit: Duration,
) -> impl std::future::Future<Output = io::Result<()>> {
    let service = service_fn(move |req| {
        head.store(true, Ordering::Relaxed);
        let response = respond(&req, &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    async move {
        match tokio::time::timeout(limit, conn).await {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connection open longer than {limit:?}: closed"),
            )),
            Ok(result) => result.map_err(io::Error::other),
        }
    }
}

/// The answer to `req`; hyper adds `Content-Length`, `Connection: close`
/// and `Date`, and leaves the body out for `HEAD`.
fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let mut content_type = TEXT_CONTENT_TYPE;
    // Only origin-form targets (`/path?query`) name a route.
    let origin_form = req.uri().scheme().is_none()
        && req.uri().authority().is_none()
        && req.uri().path().starts_with('/');
    let (status, body) = if !origin_form {
        (StatusCode::BAD_REQUEST, "bad request\n".to_owned())
    } else if !matches!(*req.method(), Method::GET | Method::HEAD) {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        )
    } else {
        match req.uri().path() {
            "/healthz" => match metrics.is_live() {
                Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            "/readyz" => match metrics.is_ready() {
                Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            "/metrics" => {
                content_type = METRICS_CONTENT_TYPE;
                (StatusCode::OK, metrics.render())
            }
            _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

#[cfg(test)]
mod tests;
