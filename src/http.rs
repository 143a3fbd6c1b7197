//! A tiny HTTP/1.1 server for `/healthz`, `/readyz` and `/metrics`.
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
            "/healthz" => ("200 OK", "ok\n".to_owned()),
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
mod tests {
    use super::*;
    use crate::metrics::{
        BACKOFF_ACTIVE, BACKOFF_SECONDS, PENDING_FAILURES, REPLICATION_LAG_BYTES,
        REPLICATION_LAG_SECONDS, STREAMING,
    };
    use tokio::task::JoinHandle;

    /// Bound on every await on the server, so a hang fails the test.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        metrics: Metrics,
        stop: watch::Sender<bool>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start() -> Server {
            Server::start_with(IO_TIMEOUT).await
        }

        async fn start_with(io_timeout: Duration) -> Server {
            let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let metrics = Metrics::new();
            let (stop, rx) = watch::channel(false);
            let task = tokio::spawn(serve_with(listener, metrics.clone(), rx, io_timeout));
            Server {
                addr,
                metrics,
                stop,
                task,
            }
        }

        /// Stops the server and checks that `serve` returns promptly.
        async fn stop(self) {
            self.stop.send(true).unwrap();
            timeout(Duration::from_secs(2), self.task)
                .await
                .expect("serve returns after shutdown")
                .expect("serve task did not panic")
                .expect("serve returns Ok");
        }

        /// Sends `raw` and reads until the server closes.
        async fn raw(&self, raw: &[u8]) -> Vec<u8> {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            stream.write_all(raw).await.unwrap();
            let mut out = Vec::new();
            timeout(TEST_TIMEOUT, stream.read_to_end(&mut out))
                .await
                .expect("server answered and closed in time")
                .unwrap();
            out
        }

        async fn get(&self, path: &str) -> Response {
            let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            Response::parse(&self.raw(req.as_bytes()).await, true)
        }
    }

    #[derive(Debug)]
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        /// Parses and checks the framing every response must have.
        fn parse(raw: &[u8], expect_body: bool) -> Response {
            let text = String::from_utf8(raw.to_vec()).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            let status = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .and_then(|code| code.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let headers: Vec<(String, String)> = lines
                .map(|l| {
                    let (k, v) = l.split_once(": ").unwrap();
                    (k.to_ascii_lowercase(), v.to_owned())
                })
                .collect();
            let resp = Response {
                status,
                headers,
                body: body.to_owned(),
            };
            assert_eq!(resp.header("connection"), Some("close"));
            let length: usize = resp.header("content-length").unwrap().parse().unwrap();
            if expect_body {
                assert_eq!(length, resp.body.len(), "Content-Length matches the body");
            } else {
                assert!(resp.body.is_empty(), "no body expected");
            }
            resp
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
    }

    #[tokio::test]
    async fn healthz_is_ok() {
        let server = Server::start().await;
        let resp = server.get("/healthz").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "ok\n");
        // HTTP/1.0 and bare newlines are fine too.
        let raw = server.raw(b"GET /healthz HTTP/1.0\nHost: x\n\n").await;
        assert_eq!(Response::parse(&raw, true).status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_follows_streaming_and_backoff() {
        let server = Server::start().await;
        let resp = server.get("/readyz").await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, "not streaming yet\n");

        server.metrics.set_streaming(true);
        let resp = server.get("/readyz").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "ready\n");

        server.metrics.set_backoff(Some(Duration::from_secs(2)));
        let resp = server.get("/readyz").await;
        assert_eq!(resp.status, 503);
        assert_eq!(resp.body, "backing off after a transient failure\n");

        server.metrics.set_backoff(None);
        assert_eq!(server.get("/readyz").await.status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_exposition() {
        let server = Server::start().await;
        server.metrics.set_pending_failures(7);
        let resp = server.get("/metrics").await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; version=0.0.4")
        );
        assert!(resp
            .body
            .contains(r#"calendar_sync_actions_total{action="create",status="success"} 0"#));
        for name in [
            REPLICATION_LAG_BYTES,
            REPLICATION_LAG_SECONDS,
            PENDING_FAILURES,
            BACKOFF_SECONDS,
            BACKOFF_ACTIVE,
            STREAMING,
        ] {
            assert!(
                resp.body.contains(&format!("# TYPE {name} gauge")),
                "{name} missing"
            );
        }
        assert!(resp.body.contains("calendar_sync_pending_failures 7\n"));
        // A query string doesn't change the route.
        assert_eq!(server.get("/metrics?name[]=x").await.status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        let server = Server::start().await;
        let raw = server.raw(b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        let resp = Response::parse(&raw, false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("3"));
        server.stop().await;
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let server = Server::start().await;
        assert_eq!(server.get("/").await.status, 404);
        assert_eq!(server.get("/healthz/extra").await.status, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn other_methods_are_405() {
        let server = Server::start().await;
        let raw = server
            .raw(b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .await;
        let resp = Response::parse(&raw, true);
        assert_eq!(resp.status, 405);
        assert_eq!(resp.header("allow"), Some("GET, HEAD"));
        server.stop().await;
    }

    #[tokio::test]
    async fn malformed_request_line_is_400() {
        let server = Server::start().await;
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"GET /healthz\r\n\r\n",
            b"GET healthz HTTP/1.1\r\n\r\n",
            b"GET /healthz HTTP/2.0\r\n\r\n",
            b"GET  /healthz HTTP/1.1\r\n\r\n",
            b"G(T /healthz HTTP/1.1\r\n\r\n",
            b"\xff\xfe /healthz HTTP/1.1\r\n\r\n",
        ] {
            let resp = Response::parse(&server.raw(raw).await, true);
            assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(raw));
        }
        server.stop().await;
    }

    #[tokio::test]
    async fn oversized_head_is_closed_without_answer() {
        // A long read timeout, so only the size cap can end the connection.
        let server = Server::start_with(Duration::from_secs(60)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut req = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
        req.resize(MAX_HEAD + 100, b'a');
        // The server may reset the connection while we still write.
        let _ = stream.write_all(&req).await;
        let mut out = Vec::new();
        let read = timeout(TEST_TIMEOUT, stream.read_to_end(&mut out))
            .await
            .expect("server closed the connection");
        assert!(read.is_err() || out.is_empty(), "unexpected answer {out:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn head_at_the_cap_is_served() {
        let server = Server::start().await;
        let mut req = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
        req.resize(MAX_HEAD - 4, b'a');
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req.len(), MAX_HEAD);
        assert_eq!(Response::parse(&server.raw(&req).await, true).status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn slow_head_times_out() {
        let server = Server::start_with(Duration::from_millis(200)).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        timeout(TEST_TIMEOUT, stream.read_to_end(&mut out))
            .await
            .expect("server closed the idle connection")
            .unwrap();
        assert!(out.is_empty());
        // The server is still serving.
        assert_eq!(server.get("/healthz").await.status, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn shutdown_returns_and_aborts_open_connections() {
        // Connections would otherwise stay open for a minute.
        let server = Server::start_with(Duration::from_secs(60)).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /hea").await.unwrap();
        // Make sure the connection was accepted before stopping.
        assert_eq!(server.get("/healthz").await.status, 200);
        let addr = server.addr;
        server.stop().await;

        let mut out = Vec::new();
        let read = timeout(TEST_TIMEOUT, idle.read_to_end(&mut out))
            .await
            .expect("open connection closed on shutdown");
        assert!(read.is_err() || out.is_empty());
        assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn already_shut_down_returns_at_once() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let (_stop, rx) = watch::channel(true);
        timeout(TEST_TIMEOUT, serve(listener, Metrics::new(), rx))
            .await
            .expect("serve returns")
            .unwrap();
    }

    #[tokio::test]
    async fn dropped_sender_stops_the_server() {
        let server = Server::start().await;
        drop(server.stop);
        timeout(TEST_TIMEOUT, server.task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn request_line_and_head_end() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(RequestLine {
                method: "GET",
                path: "/metrics"
            })
        );
        assert_eq!(parse_request_line(b"GET /metrics HTTP/1.1 x\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\r\n\r\n"), None);
        assert_eq!(head_end(b"a\r\n\r\nrest"), Some(5));
        assert_eq!(head_end(b"a\n\nrest"), Some(3));
        assert_eq!(head_end(b"a\r\nb\r\n"), None);
        assert_eq!(head_end(b"\n"), None);
    }
}
