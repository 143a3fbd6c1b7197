//! The HTTP surface over real sockets.

use super::*;
use crate::metrics::{
    BACKOFF_ACTIVE, BACKOFF_SECONDS, PENDING_FAILURES, REPLICATION_LAG_BYTES,
    REPLICATION_LAG_SECONDS, STREAMING,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::timeout;

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
        Server::start_with(Limits::DEFAULT).await
    }

    async fn start_with(limits: Limits) -> Server {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("test I/O");
        let addr = listener.local_addr().expect("test I/O");
        let metrics = Metrics::new();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve_with(listener, metrics.clone(), rx, limits));
        Server {
            addr,
            metrics,
            stop,
            task,
        }
    }

    /// Stops the server and checks that `serve` returns promptly.
    async fn stop(self) {
        self.stop.send(true).expect("test I/O");
        timeout(Duration::from_secs(2), self.task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task did not panic")
            .expect("serve returns Ok");
    }

    /// Sends `raw` and reads until the server closes.
    async fn raw(&self, raw: &[u8]) -> Vec<u8> {
        let mut stream = TcpStream::connect(self.addr).await.expect("test I/O");
        stream.write_all(raw).await.expect("test I/O");
        let mut out = Vec::new();
        timeout(TEST_TIMEOUT, stream.read_to_end(&mut out))
            .await
            .expect("server answered and closed in time")
            .expect("test I/O");
        out
    }

    async fn get(&self, path: &str) -> Response {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        Response::parse(&self.raw(req.as_bytes()).await, true)
    }

    /// A connection that has sent `sent` and waits.
    async fn open(&self, sent: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.expect("test I/O");
        stream.write_all(sent).await.expect("test I/O");
        stream
    }
}

/// Limits with nothing but `change` short enough to matter in a test.
fn limits(change: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits {
        connections: 64,
        head: Duration::from_secs(60),
        connection: Duration::from_secs(60),
        grace: Duration::from_secs(60),
    };
    change(&mut limits);
    limits
}

/// Waits until the server closes `stream`; what it sent before.
async fn closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match timeout(TEST_TIMEOUT, stream.read_to_end(&mut out)).await {
        Err(_) => panic!("the server did not close the connection"),
        // A reset is a close too.
        Ok(Err(_)) | Ok(Ok(_)) => out,
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
        let text = String::from_utf8(raw.to_vec()).expect("test I/O");
        let (head, body) = text.split_once("\r\n\r\n").expect("complete head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("test I/O");
        // hyper answers an HTTP/1.0 request in HTTP/1.0.
        let http10 = status_line.starts_with("HTTP/1.0 ");
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("test I/O");
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        let resp = Response {
            status,
            headers,
            body: body.to_owned(),
        };
        // One request per connection (HTTP/1.0 closes by default).
        if !http10 {
            assert_eq!(resp.header("connection"), Some("close"));
        }
        let length: usize = resp
            .header("content-length")
            .expect("test I/O")
            .parse()
            .expect("test I/O");
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
        b"GET http://localhost/healthz HTTP/1.1\r\n\r\n",
        b"GET localhost:80 HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
    ] {
        let resp = Response::parse(&server.raw(raw).await, true);
        assert_eq!(resp.status, 400, "{:?}", String::from_utf8_lossy(raw));
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_head_is_431_and_closed() {
    // Long timeouts, so only the size cap can end the connection.
    let server = Server::start_with(limits(|_| {})).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("test I/O");
    let mut req = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    req.resize(MAX_HEAD + 100, b'a');
    // The server may reset the connection while we still write.
    let _ = stream.write_all(&req).await;
    let out = closed(&mut stream).await;
    // Unless the close reset the connection under the answer.
    if !out.is_empty() {
        assert_eq!(Response::parse(&out, true).status, 431);
    }
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
    let server = Server::start_with(limits(|l| l.head = Duration::from_millis(200))).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("test I/O");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("test I/O");
    let mut out = Vec::new();
    timeout(TEST_TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("server closed the idle connection")
        .expect("test I/O");
    assert!(out.is_empty());
    // The server is still serving.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_returns_and_aborts_open_connections() {
    // Connections would otherwise stay open for a minute; the cap is full.
    let server = Server::start_with(limits(|l| l.connections = 4)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.open(b"GET /hea").await);
    }
    // Make sure the connections were accepted before stopping.
    assert_eq!(server.get("/healthz").await.status, 200);
    open.push(server.open(b"").await);
    let addr = server.addr;
    server.stop().await;

    for stream in &mut open {
        assert!(closed(stream).await.is_empty());
    }
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn a_connection_beyond_the_cap_closes_the_oldest_still_without_a_head() {
    // Before, the third waited for a head timeout (3 s).
    let server = Server::start_with(Limits {
        connections: 2,
        ..Limits::DEFAULT
    })
    .await;
    let mut first = server.open(b"GET /hea").await;
    let mut second = server.open(b"").await;
    let mut third = server
        .open(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    // Once the first has had its grace.
    let out = timeout(Duration::from_secs(1), closed(&mut third))
        .await
        .expect("answered within 1 s");
    assert_eq!(Response::parse(&out, true).status, 200);
    assert!(closed(&mut first).await.is_empty());
    // The second keeps its slot (a bounded look for an absence: a close
    // would come within milliseconds).
    let mut out = Vec::new();
    let early = timeout(Duration::from_millis(300), second.read_to_end(&mut out)).await;
    assert!(early.is_err(), "second connection closed too");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_a_cap_of_answers_wait_for_a_slot() {
    // A connection with its head keeps its slot beyond the grace.
    let server = Server::start_with(Limits {
        connections: 1,
        ..Limits::DEFAULT
    })
    .await;
    // An answer larger than the socket buffers of both ends.
    let filler =
        prometheus::IntGauge::new("test_filler", "x".repeat(8 << 20)).expect("test metric");
    server
        .metrics
        .registry()
        .register(Box::new(filler))
        .expect("test metric");
    // A small receive window, so the server's send buffer cannot grow to
    // take the rest.
    let socket = tokio::net::TcpSocket::new_v4().expect("test I/O");
    socket.set_recv_buffer_size(4096).expect("test I/O");
    let mut reader = socket.connect(server.addr).await.expect("test I/O");
    reader
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("test I/O");
    // The answer has begun: the request is in, the rest waits for us.
    let mut start = [0; 12];
    timeout(TEST_TIMEOUT, reader.read_exact(&mut start))
        .await
        .expect("answer begun")
        .expect("test I/O");
    assert_eq!(&start, b"HTTP/1.1 200");
    let mut waiting = server
        .open(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut out = Vec::new();
    // Not answered, and the answer under way not cut, while it holds the
    // only slot (a bounded look for an absence).
    let early = timeout(Duration::from_millis(500), waiting.read_to_end(&mut out)).await;
    assert!(
        early.is_err(),
        "answered beyond the cap: {}",
        String::from_utf8_lossy(&out)
    );
    let mut rest = start.to_vec();
    timeout(TEST_TIMEOUT, reader.read_to_end(&mut rest))
        .await
        .expect("whole answer read")
        .expect("test I/O");
    let resp = Response::parse(&rest, true);
    assert!(resp.body.len() > 8 << 20);
    let out = closed(&mut waiting).await;
    assert_eq!(Response::parse(&out, true).status, 200);
    server.stop().await;
}

/// Opens `n` connections that send `sent` and wait, and keeps them open:
/// each is reopened as soon as the server closes it. Returns once the first
/// `n` are connected, with a count of the reopenings.
async fn flood(addr: SocketAddr, n: usize, sent: &'static [u8]) -> (JoinSet<()>, Arc<AtomicUsize>) {
    let reopened = Arc::new(AtomicUsize::new(0));
    let mut clients = JoinSet::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(addr).await.expect("test I/O");
        let reopened = Arc::clone(&reopened);
        clients.spawn(async move {
            loop {
                if stream.write_all(sent).await.is_ok() {
                    // Until the server closes (a reset is a close too).
                    let _ = stream.read_to_end(&mut Vec::new()).await;
                }
                stream = loop {
                    match TcpStream::connect(addr).await {
                        Ok(stream) => break stream,
                        Err(_) => tokio::task::yield_now().await,
                    }
                };
                reopened.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    (clients, reopened)
}

#[tokio::test]
async fn a_health_check_gets_through_a_cap_held_by_reconnecting_idle_clients() {
    // Before, a check waited for a head timeout (3 s) behind the clients
    // that connected first.
    let server = Server::start_with(Limits {
        connections: 8,
        ..Limits::DEFAULT
    })
    .await;
    // More idle clients than slots, half of them silent: the rest wait
    // ahead of the check, and every client closed comes straight back.
    let (mut silent, reopened) = flood(server.addr, 6, b"").await;
    let (mut half, _) = flood(server.addr, 6, b"GET /hea").await;
    for path in ["/healthz", "/readyz", "/healthz"] {
        let resp = timeout(Duration::from_secs(1), server.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path} not answered within 1 s"));
        // (`/readyz` is 503: not streaming.)
        assert_eq!(resp.status, if path == "/healthz" { 200 } else { 503 });
    }
    // The flood really was closed and came back meanwhile.
    assert!(reopened.load(Ordering::Relaxed) > 0);
    silent.abort_all();
    half.abort_all();
    server.stop().await;
}

#[tokio::test]
async fn idle_connections_time_out_and_a_health_check_gets_through() {
    let server = Server::start_with(limits(|l| {
        l.connections = 2;
        l.head = Duration::from_millis(300);
    }))
    .await;
    // Idle connections, one silent and one with half a head, fill the cap
    // and time out (nobody else wants their slots).
    let mut silent = server.open(b"").await;
    let mut half = server.open(b"GET /hea").await;
    assert!(closed(&mut silent).await.is_empty());
    assert!(closed(&mut half).await.is_empty());
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_client_holding_its_connection_open_after_the_answer_frees_the_slot() {
    let server = Server::start_with(limits(|l| l.connections = 1)).await;
    // Asks for keep-alive and keeps its end open.
    let mut kept = server
        .open(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let out = closed(&mut kept).await;
    assert_eq!(Response::parse(&out, true).status, 200);
    // The only slot is free again.
    assert_eq!(server.get("/readyz").await.status, 503);
    drop(kept);
    server.stop().await;
}

#[tokio::test]
async fn the_connection_limit_cuts_off_a_slow_client() {
    // The head timeout alone would wait a minute.
    let server = Server::start_with(limits(|l| {
        l.connections = 1;
        l.connection = Duration::from_millis(300);
    }))
    .await;
    let mut slow = server.open(b"GET /healthz HTTP/1.1\r\n").await;
    let dribble = async {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"X: y\r\n").await.is_err() {
                return;
            }
        }
        panic!("still open after 10 s");
    };
    timeout(TEST_TIMEOUT, dribble)
        .await
        .expect("the server closed the slow connection");
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn already_shut_down_returns_at_once() {
    let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("test I/O");
    let (_stop, rx) = watch::channel(true);
    timeout(TEST_TIMEOUT, serve(listener, Metrics::new(), rx))
        .await
        .expect("serve returns")
        .expect("test I/O");
}

#[tokio::test]
async fn dropped_sender_stops_the_server() {
    let server = Server::start().await;
    drop(server.stop);
    timeout(TEST_TIMEOUT, server.task)
        .await
        .expect("serve returns")
        .expect("test I/O")
        .expect("test I/O");
}

#[test]
fn only_a_path_names_a_route() {
    let metrics = Metrics::new();
    let status = |method: Method, uri: &str| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .expect("test request");
        respond(&req, &metrics).status()
    };
    assert_eq!(status(Method::GET, "/healthz"), StatusCode::OK);
    assert_eq!(status(Method::HEAD, "/healthz?x"), StatusCode::OK);
    assert_eq!(
        status(Method::GET, "http://x/healthz"),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(status(Method::GET, "x:80"), StatusCode::BAD_REQUEST);
    assert_eq!(status(Method::OPTIONS, "*"), StatusCode::BAD_REQUEST);
    assert_eq!(
        status(Method::PUT, "/healthz"),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
