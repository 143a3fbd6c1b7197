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
//! - at most [`MAX_CONNECTIONS`] connections are served at once. Beyond
//!   that the server stops accepting, so a new connection waits in the
//!   kernel's listen backlog until a slot frees, and is then served with the
//!   request it sent meanwhile. Waiting rather than refusing: the ECS health
//!   check may be one of those connections, and a refused check is a failed
//!   one (3 in a row restart the task), while a slot held by an idle client
//!   frees within [`HEAD_TIMEOUT`] (3 s, under the check's 5 s) and any slot
//!   within [`CONNECTION_TIMEOUT`], whatever its client does. The backlog
//!   holds 128 (tokio's `bind` asks for what std does); beyond that Linux
//!   drops the connection attempt and the client retries its SYN;
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
//! the slot count; a failing connection is logged at debug and never stops
//! the server. On shutdown the listener is dropped and every connection
//! still open is aborted (an answer cut short is one scrape or health check
//! lost while the process is stopping anyway).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
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
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// Connections served at once; the next waits in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// Longest the client may take, from being accepted, to send the request
/// head. Shorter than the ECS health check's 5 s timeout
/// (deploy/ecs-task-definition.json), so a check waiting behind a full cap
/// of idle connections is still answered in time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a connection lives: the head within [`HEAD_TIMEOUT`], then at
/// least 5 s to take the response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(8);
/// Largest accepted request head, request line and headers included
/// (hyper's read buffer; 8 KiB is also its smallest).
const MAX_HEAD: usize = 8 * 1024;
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
}

impl Limits {
    const DEFAULT: Limits = Limits {
        connections: MAX_CONNECTIONS,
        head: HEAD_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
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
                // Reaped before accepting, so `len` counts live connections.
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = joined {
                        if e.is_panic() {
                            tracing::warn!(error = %e, "http connection task panicked");
                        }
                    }
                }
                accepted = listener.accept(), if connections.len() < limits.connections => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let conn = connection(stream, &http, metrics.clone(), limits.connection);
                            connections.spawn(async move {
                                if let Err(e) = conn.await {
                                    tracing::debug!(%peer, error = %e, "http connection failed");
                                }
                            });
                        }
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
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    tracing::debug!("http server stopped");
    Ok(())
}

/// Serves one connection (one request), for at most `limit`.
fn connection(
    stream: TcpStream,
    http: &http1::Builder,
    metrics: Metrics,
    limit: Duration,
) -> impl std::future::Future<Output = io::Result<()>> {
    let service = service_fn(move |req| {
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
