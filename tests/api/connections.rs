//! Connections at the byte level: keep-alive, pipelining, heads and bodies split across packets,
//! the idle timeout, HTTP/2 with prior knowledge, and shutdown — the behaviour a connection must
//! keep while the server takes hyper apart between requests (src/net/mod.rs). Clients that go
//! silent in any state, or reset HTTP/2 streams, are raw sockets or a real HTTP/2 client (`h2`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{body::Bytes, http};
use serde_json::Value;
use shortener::links::resolve::{FillPause, Hooks};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

use crate::helpers::*;

/// One parsed response: status, headers (lower-cased names), body.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A response head (without its blank line): status and headers (lower-cased names).
fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let head = String::from_utf8(head.to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (status, headers)
}

/// Reads `n` complete responses (each with a `content-length`) from `conn`.
pub(crate) async fn read_responses(conn: &mut TcpStream, n: usize) -> Vec<Resp> {
    read_responses_paced(conn, n, Duration::ZERO).await
}

/// [`read_responses`], pausing `pause` after every read that leaves a response incomplete (a
/// slow reader).
async fn read_responses_paced(conn: &mut TcpStream, n: usize, pause: Duration) -> Vec<Resp> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, headers) = parse_head(&buf[..end]);
            let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                out.push(Resp { status, headers, body });
                continue;
            }
        }
        if !buf.is_empty() && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, conn.read(&mut chunk)).await;
        let got = read.expect("responses within 10 s").unwrap();
        assert!(got > 0, "connection closed after {} of {n} responses ({} bytes of the next)", out.len(), buf.len());
        buf.extend_from_slice(&chunk[..got]);
    }
    assert!(buf.is_empty(), "unexpected bytes after the responses: {:?}", String::from_utf8_lossy(&buf));
    out
}

/// Waits up to `within` for the server to close `conn` (EOF or reset); returns when it did.
pub(crate) async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => None,
    }
}

pub(crate) fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// The head of a `POST /api/v1/links` with a JSON body of `len` bytes.
pub(crate) fn post_links_head(key: &str, len: usize) -> String {
    format!(
        "POST /api/v1/links HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Reads until the server closes `conn` (EOF or reset), whatever it sends first (an HTTP/2
/// server sends SETTINGS and GOAWAY); `None` if it is still open after `within`.
async fn until_closed(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

/// The HTTP/2 client preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// HTTP/2 frame types and flags the raw tests use.
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK literal header field without indexing, its name from the static table.
fn hpack_literal(name_index: u8, value: &str) -> Vec<u8> {
    assert!(name_index < 16 && value.len() < 127);
    let mut field = vec![name_index, value.len() as u8];
    field.extend_from_slice(value.as_bytes());
    field
}

/// HEADERS for a `GET path` on `stream`, ending the stream (HPACK without the dynamic table).
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.extend(hpack_literal(4, path)); // :path
    block.extend(hpack_literal(1, "t")); // :authority
    h2_frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

/// RST_STREAM(CANCEL) for `stream`.
fn h2_reset(stream: u32) -> Vec<u8> {
    h2_frame(RST_STREAM, 0, stream, &0x8u32.to_be_bytes())
}

/// One frame read from the server: type, flags, stream, payload.
async fn read_h2_frame(conn: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head))
        .await
        .expect("a frame within 10 s")
        .unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff, payload)
}

/// An HTTP/2 client with prior knowledge; the returned task ends when the connection does.
async fn h2_client(addr: std::net::SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

fn h2_request(method: http::Method, path: &str) -> http::Request<()> {
    http::Request::builder().method(method).uri(format!("http://t{path}")).body(()).unwrap()
}

/// An app whose fills can be held (every redirect reads SQLite: no L1), with the given head
/// timeout, and a link `held` to hold.
async fn app_with_pause(timeout: Duration) -> (TestApp, Arc<FillPause>) {
    let pause = Arc::new(FillPause::default());
    let app = spawn_app_with(
        None,
        |c| {
            both_timeouts(c, timeout);
            c.cache.l1_capacity = 0;
        },
        Hooks { fill_pause: Some(pause.clone()), ..Hooks::default() },
    )
    .await;
    app.create_code("held", "https://example.com/held").await;
    (app, pause)
}

/// The head and the keep-alive timeouts both set to `t`.
fn both_timeouts(c: &mut shortener::config::Config, t: Duration) {
    c.http.header_read_timeout = t;
    c.http.keepalive_timeout = t;
}

async fn until_reached(pause: &FillPause) {
    tokio::time::timeout(Duration::from_secs(10), pause.reached.notified()).await.expect("the fill reached the hook");
}

/// Where a client can fall silent: every state of the connection layer it can leave a connection in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Silent {
    /// Accepted, not a byte sent.
    BeforeTheFirstByte,
    /// Fewer bytes than the `PRI` check looks at.
    AfterOneByte,
    AfterTwoBytesOfPri,
    AfterPri,
    InTheH2Preface,
    /// The HTTP/2 preface done, no stream opened.
    H2WithoutStreams,
    /// One stream answered, none open.
    H2AfterAnAnsweredStream,
    /// The only stream reset by the client while its handler was pending.
    H2AfterResettingAPendingStream,
    InAnHttp1Head,
    BetweenHttp1Requests,
    AfterAnHttp1RequestWithABody,
}

const SILENT: [Silent; 11] = [
    Silent::BeforeTheFirstByte,
    Silent::AfterOneByte,
    Silent::AfterTwoBytesOfPri,
    Silent::AfterPri,
    Silent::InTheH2Preface,
    Silent::H2WithoutStreams,
    Silent::H2AfterAnAnsweredStream,
    Silent::H2AfterResettingAPendingStream,
    Silent::InAnHttp1Head,
    Silent::BetweenHttp1Requests,
    Silent::AfterAnHttp1RequestWithABody,
];

/// Opens a connection to `addr` and leaves it in `state`, the client silent from then on. `key`:
/// an API key; `pause`: the app's fill hook (needed only to reset a pending stream, on a link
/// `held` that is not cached).
async fn open_silent(addr: std::net::SocketAddr, key: &str, pause: Option<&FillPause>, state: Silent) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    match state {
        Silent::BeforeTheFirstByte => {}
        Silent::AfterOneByte => conn.write_all(b"G").await.unwrap(),
        Silent::AfterTwoBytesOfPri => conn.write_all(b"PR").await.unwrap(),
        Silent::AfterPri => conn.write_all(b"PRI").await.unwrap(),
        Silent::InTheH2Preface => conn.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(),
        Silent::H2WithoutStreams => {
            conn.write_all(H2_PREFACE).await.unwrap();
            assert_eq!(read_h2_frame(&mut conn).await.0, SETTINGS);
        }
        Silent::H2AfterAnAnsweredStream => {
            conn.write_all(&[H2_PREFACE, &h2_get(1, "/health")].concat()).await.unwrap();
            loop {
                let (kind, flags, stream, _) = read_h2_frame(&mut conn).await;
                if stream == 1 && flags & END_STREAM != 0 {
                    break;
                }
                assert_ne!(kind, GOAWAY);
            }
        }
        Silent::H2AfterResettingAPendingStream => {
            let pause = pause.expect("a fill hook to hold the handler");
            pause.arm();
            conn.write_all(&[H2_PREFACE, &h2_get(1, "/held")].concat()).await.unwrap();
            until_reached(pause).await;
            conn.write_all(&h2_reset(1)).await.unwrap();
        }
        Silent::InAnHttp1Head => conn.write_all(b"GET /held HTTP/1.1\r\nHost: t\r\n").await.unwrap(),
        Silent::BetweenHttp1Requests => {
            conn.write_all(get("/health").as_bytes()).await.unwrap();
            assert_eq!(read_responses(&mut conn, 1).await[0].status, 200);
        }
        Silent::AfterAnHttp1RequestWithABody => {
            let body = br#"{"url":"https://example.com/silent"}"#;
            conn.write_all(post_links_head(key, body.len()).as_bytes()).await.unwrap();
            conn.write_all(body).await.unwrap();
            assert_eq!(read_responses(&mut conn, 1).await[0].status, 201);
        }
    }
    conn
}

/// Once a later connection is answered, every earlier one has been accepted (one accept loop,
/// in order).
async fn all_accepted(addr: std::net::SocketAddr) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(get("/health").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 200);
}

/// Reads frames until a GOAWAY (returning its error code and the frames of `kind` seen before
/// it) or until the connection closes without one.
async fn until_goaway(conn: &mut TcpStream, kind: u8) -> (Option<u32>, usize) {
    let mut seen = 0;
    let mut head = [0u8; 9];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) {
            return (None, seen);
        }
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        conn.read_exact(&mut payload).await.unwrap();
        if head[3] == GOAWAY {
            return (Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())), seen);
        }
        seen += usize::from(head[3] == kind);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("pipe-a", "https://example.com/a").await;
    app.create_code("pipe-b", "https://example.com/b").await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let batch = format!("{}{}{}{}", get("/pipe-a"), get("/nope-nope"), get("/pipe-b"), get("/health"));
    conn.write_all(batch.as_bytes()).await.unwrap();
    let r = read_responses(&mut conn, 4).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/a")));
    assert_eq!(r[1].status, 404);
    assert_eq!((r[2].status, r[2].header("location")), (302, Some("https://example.com/b")));
    assert_eq!(r[3].status, 200);
    // And the connection stays usable afterwards.
    conn.write_all(get("/pipe-a").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_split_across_packets_are_assembled_even_after_an_answered_request() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("split", "https://example.com/split").await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    // A whole request plus the start of the next, then the rest of it byte by byte.
    let second = get("/split");
    let (start, rest) = second.split_at(7);
    conn.write_all(format!("{}{start}", get("/split")).as_bytes()).await.unwrap();
    let first = read_responses(&mut conn, 1).await;
    assert_eq!(first[0].status, 302);
    for b in rest.bytes() {
        // Pacing, not waiting: each byte must arrive as a packet of its own.
        tokio::time::sleep(Duration::from_millis(5)).await;
        conn.write_all(&[b]).await.unwrap();
    }
    let r = read_responses(&mut conn, 1).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/split")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_in_two_packets_then_a_redirect_on_the_same_connection() {
    let app = spawn_app(None, |_| {}).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"url":"https://example.com/posted","code":"posted"}"#;
    conn.write_all(post_links_head(&app.key, body.len()).as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    // The scenario: the rest of the body comes later, in a packet of its own.
    tokio::time::sleep(Duration::from_millis(150)).await;
    conn.write_all(&body[10..]).await.unwrap();
    let r = read_responses(&mut conn, 1).await;
    assert_eq!(r[0].status, 201, "{}", String::from_utf8_lossy(&r[0].body));
    let created: Value = serde_json::from_slice(&r[0].body).unwrap();
    assert_eq!(created["code"], "posted");
    conn.write_all(get("/posted").as_bytes()).await.unwrap();
    let r = read_responses(&mut conn, 1).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/posted")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_lives_while_used_and_closes_after_the_idle_timeout() {
    let timeout = Duration::from_millis(600);
    let app = spawn_app(None, |c| both_timeouts(c, timeout)).await;
    app.create_code("keep", "https://example.com/ka").await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    // Requests 300 ms apart for well over the timeout: the wait restarts after every answer.
    for _ in 0..6 {
        conn.write_all(get("/keep").as_bytes()).await.unwrap();
        assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(started.elapsed() > timeout * 2);
    let closed = closed_within(&mut conn, Duration::from_secs(5)).await.expect("idle connection closed");
    // 300 ms of the timeout were already spent sleeping after the last answer.
    assert!(closed < Duration::from_millis(1500), "closed {closed:?} after the last wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_waits_outlive_the_head_timeout_and_heads_do_not() {
    let (head, idle) = (Duration::from_millis(300), Duration::from_secs(3));
    let app = spawn_app(None, |c| {
        c.http.header_read_timeout = head;
        c.http.keepalive_timeout = idle;
    })
    .await;
    app.create_code("ka2", "https://example.com/ka2").await;
    let answered = |conn: TcpStream| async move {
        let mut conn = conn;
        conn.write_all(get("/ka2").as_bytes()).await.unwrap();
        assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
        conn
    };
    // Idle after an answer: kept well past the head timeout, closed at the keep-alive one.
    let mut conn = answered(TcpStream::connect(app.addr).await.unwrap()).await;
    let closed = closed_within(&mut conn, idle * 3).await.expect("an idle connection is closed");
    assert!(
        closed >= idle - Duration::from_millis(200),
        "closed {closed:?} after its answer: before the keep-alive timeout"
    );
    // Idle for longer than the head timeout, then part of a head: the head timeout counts from
    // its first bytes.
    let mut conn = answered(TcpStream::connect(app.addr).await.unwrap()).await;
    tokio::time::sleep(head * 2).await;
    conn.write_all(b"GET /ka2 HTTP/1.1\r\nHo").await.unwrap();
    let closed = closed_within(&mut conn, idle * 3).await.expect("a stalled head is closed");
    assert!(closed >= head - Duration::from_millis(100), "closed {closed:?} after the partial head");
    assert!(closed < idle / 2, "a partial head was kept {closed:?}, as if the connection were idle");
    // A connection that never sends a byte is not a keep-alive one: the head timeout.
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let closed = closed_within(&mut conn, idle * 3).await.expect("a silent connection is closed");
    assert!(closed < idle / 2, "a connection that sent nothing was kept {closed:?}");
    // And the service still answers on the keep-alive connection in between.
    let conn = answered(TcpStream::connect(app.addr).await.unwrap()).await;
    tokio::time::sleep(head * 3).await;
    drop(answered(conn).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_after_a_post_is_closed_too() {
    let timeout = Duration::from_millis(500);
    let app = spawn_app(None, |c| both_timeouts(c, timeout)).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    let body = br#"{"url":"https://example.com/p2"}"#;
    conn.write_all(post_links_head(&app.key, body.len()).as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 201);
    let closed = closed_within(&mut conn, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle connection is closed even when its last request had a body");
    assert!(closed >= timeout / 2, "closed too early: {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_connection_close_requests_get_their_answer_then_a_close() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("old", "https://example.com/old").await;
    for req in [
        "GET /old HTTP/1.0\r\n\r\n".to_string(),
        "GET /old HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(req.as_bytes()).await.unwrap();
        let r = read_responses(&mut conn, 1).await;
        assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/old")));
        assert!(closed_within(&mut conn, Duration::from_secs(2)).await.is_some(), "{req:?}: closed after the answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("viah2", "https://example.com/over-h2").await;
    let (h2, _conn) = h2_client(app.addr).await;
    let mut h2 = h2.ready().await.unwrap();
    // A redirect (straight to its handler) and an API call (through the router), on one
    // connection.
    let (redirect, _) = h2.send_request(h2_request(http::Method::GET, "/viah2"), true).unwrap();
    let redirect = redirect.await.unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()["location"], "https://example.com/over-h2");
    let mut api = h2_request(http::Method::GET, "/api/v1/links/viah2");
    api.headers_mut().insert("authorization", format!("Bearer {}", app.key).parse().unwrap());
    let (link, _) = h2.ready().await.unwrap().send_request(api, true).unwrap();
    let link = link.await.unwrap();
    assert_eq!(link.status(), 200);
    let mut body = link.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        bytes.extend_from_slice(&chunk);
    }
    let link: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(link["url"], "https://example.com/over-h2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_a_large_response_whole_even_past_the_timeout() {
    let timeout = Duration::from_millis(300);
    let app = spawn_app(None, |c| both_timeouts(c, timeout)).await;
    // About 8 MB of JSON: more than the server's socket can buffer, so hyper's writes block
    // while the client reads.
    let long = format!("https://example.com/{}?n=", "x".repeat(8000));
    seed_links(&app.db_url, "big", &long, 1000).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut conn = socket.connect(app.addr).await.unwrap();
    let req = format!("GET /api/v1/links?limit=1000 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n", app.key);
    conn.write_all(req.as_bytes()).await.unwrap();
    let started = Instant::now();
    let r = read_responses_paced(&mut conn, 1, Duration::from_millis(10)).await;
    assert_eq!(r[0].status, 200);
    assert!(r[0].body.len() > 8_000_000, "{} bytes", r[0].body.len());
    assert!(started.elapsed() > timeout * 2, "the read took {:?}: too fast to test the timer", started.elapsed());
    let body: Value = serde_json::from_slice(&r[0].body).unwrap();
    assert_eq!(body["links"].as_array().map(Vec::len), Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_requests_is_closed_after_the_timeout() {
    let app = spawn_app(None, |c| both_timeouts(c, Duration::from_millis(400))).await;
    for preface in [H2_PREFACE, b"PRI * HT"] {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(preface).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return started.elapsed(),
                    Ok(_) => continue, // the server's SETTINGS, then a GOAWAY
                }
            }
        })
        .await
        .expect("closed within 5 s");
        assert!(closed >= Duration::from_millis(200), "closed too early: {closed:?}");
    }
}

/// `n` keep-alive connections, each idle after one answered `GET path` (a 302).
async fn idle_after_one_answer(addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(get(path).as_bytes()).await.unwrap();
        assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
        conns.push(conn);
    }
    conns
}

/// Starts a graceful shutdown in the background and returns once it has begun: the listener is
/// closed (new connections are refused).
async fn begin_stop(mut app: TestApp) -> JoinHandle<()> {
    let addr = app.addr;
    let stopping = tokio::spawn(async move { app.stop().await });
    let closed = eventually(Duration::from_secs(5), || async move { TcpStream::connect(addr).await.is_err() }).await;
    assert!(closed, "the listener closed");
    stopping
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_after_the_short_drain() {
    let mut app = spawn_app(None, |c| both_timeouts(c, Duration::from_secs(30))).await;
    app.create_code("shut", "https://example.com/sd").await;
    let mut idle = idle_after_one_answer(app.addr, "/shut", 20).await;
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    // IDLE_DRAIN (500 ms) for a last request that never comes, not the 30 s head timeout.
    assert!(took < Duration::from_secs(3), "shutdown waited {took:?} for idle connections");
    assert!(took >= Duration::from_millis(400), "idle connections were closed without a drain ({took:?})");
    for conn in &mut idle {
        assert!(closed_within(conn, Duration::from_secs(1)).await.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_on_an_idle_connection_as_shutdown_begins_is_answered_with_connection_close() {
    let app = spawn_app(None, |c| both_timeouts(c, Duration::from_secs(30))).await;
    app.create_code("last", "https://example.com/last").await;
    // Keep-alive connections, idle after one answer, and one never used: the state of a busy
    // client's connections at the moment a restart begins.
    let mut conns = idle_after_one_answer(app.addr, "/last", 10).await;
    conns.push(TcpStream::connect(app.addr).await.unwrap());
    all_accepted(app.addr).await;
    // Then the clients send their next requests.
    let stopping = begin_stop(app).await;
    for conn in &mut conns {
        conn.write_all(get("/last").as_bytes()).await.unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = read_responses(conn, 1).await;
        assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/last")), "connection {i}");
        assert_eq!(r[0].header("connection"), Some("close"), "connection {i}: told to reconnect: {:?}", r[0].headers);
        assert!(closed_within(conn, Duration::from_secs(1)).await.is_some(), "connection {i} closed after it");
    }
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown ends").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_straddles_the_start_of_shutdown_is_answered_with_connection_close() {
    let app = spawn_app(None, |c| both_timeouts(c, Duration::from_secs(30))).await;
    app.create_code("split", "https://example.com/split").await;
    let head = get("/split");
    let (first, rest) = head.as_bytes().split_at(22);
    // A fresh connection and a keep-alive one, each with the first segment of a head sent.
    let mut conns = idle_after_one_answer(app.addr, "/split", 1).await;
    conns.push(TcpStream::connect(app.addr).await.unwrap());
    for conn in &mut conns {
        conn.write_all(first).await.unwrap();
    }
    all_accepted(app.addr).await;
    let stopping = begin_stop(app).await;
    for conn in &mut conns {
        conn.write_all(rest).await.unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = read_responses(conn, 1).await;
        assert_eq!((r[0].status, r[0].header("connection")), (302, Some("close")), "connection {i}");
    }
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("shutdown ends").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_silent_in_any_state_is_closed_by_the_head_timeout() {
    let timeout = Duration::from_millis(500);
    let (app, pause) = app_with_pause(timeout).await;
    let mut wrong = Vec::new();
    for state in SILENT {
        let mut conn = open_silent(app.addr, &app.key, Some(&pause), state).await;
        let closed = until_closed(&mut conn, Duration::from_secs(5)).await;
        // The wait is counted from the accept or the last answer, and re-armed lazily: between
        // one and two timeouts.
        if !closed.is_some_and(|c| c >= timeout / 2 && c <= timeout * 3) {
            wrong.push((state, closed));
        }
    }
    assert!(wrong.is_empty(), "closed too early, too late or never (None): {wrong:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_client_silent_in_any_state() {
    let (mut app, pause) = app_with_pause(Duration::from_secs(30)).await;
    let mut conns = Vec::new();
    for state in SILENT {
        conns.push((state, open_silent(app.addr, &app.key, Some(&pause), state).await));
    }
    all_accepted(app.addr).await;
    let started = Instant::now();
    app.stop().await;
    let took = started.elapsed();
    let mut open = Vec::new();
    for (state, conn) in &mut conns {
        if until_closed(conn, Duration::from_secs(1)).await.is_none() {
            open.push(*state);
        }
    }
    assert!(open.is_empty(), "open after a shutdown that took {took:?}: {open:?}");
    assert!(took < Duration::from_secs(2), "shutdown waited {took:?} for silent clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_once_with_clients_silent_in_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "s");
    let env = [
        ("REDIS_ENABLED", "false".to_string()),
        ("HEADER_READ_TIMEOUT_MS", "30000".to_string()),
        ("SHUTDOWN_TIMEOUT_SECS", "30".to_string()),
    ];
    let svc = ServiceProcess::start(&db_url, &env, "", dir.path().join("s.log")).await;
    let key = create_key(&db_url, "silent", false).await;
    let addr = ([127, 0, 0, 1], svc.port).into();
    let mut conns = Vec::new();
    // Resetting a pending stream needs the in-process fill hook; the other states are all here.
    for state in SILENT.into_iter().filter(|s| *s != Silent::H2AfterResettingAPendingStream) {
        conns.push((state, open_silent(addr, &key, None, state).await));
    }
    all_accepted(addr).await;
    let started = Instant::now();
    svc.signal("TERM");
    let status = svc.wait().await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?} with silent clients open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_whose_pending_stream_the_client_reset_idles_out() {
    let timeout = Duration::from_millis(500);
    let (app, pause) = app_with_pause(timeout).await;
    let (h2, conn) = h2_client(app.addr).await;
    let mut h2 = h2.ready().await.unwrap();
    pause.arm();
    let (_response, mut stream) = h2.send_request(h2_request(http::Method::GET, "/held"), true).unwrap();
    until_reached(&pause).await;

    stream.send_reset(h2::Reason::CANCEL);
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;

    assert!(ended.is_ok(), "the connection is open 5 s after its only stream was reset");
    let took = started.elapsed();
    assert!(took >= timeout / 2 && took <= timeout * 3, "closed {took:?} after the reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_pending_http2_streams_again_and_again_ends_in_a_goaway() {
    let (app, pause) = app_with_pause(Duration::from_secs(10)).await;
    let (h2, conn) = h2_client(app.addr).await;
    let mut h2 = h2.ready().await.unwrap();
    // The first stream holds the fill; every later one waits on that same fill (one flight per
    // code), so each is pending when it is reset.
    pause.arm();
    let (first, _) = h2.send_request(h2_request(http::Method::GET, "/held"), true).unwrap();
    until_reached(&pause).await;

    let mut reset = 0u64;
    let refused = loop {
        if reset == 2000 {
            break None;
        }
        let sent = match h2.clone().ready().await {
            Ok(mut ready) => ready.send_request(h2_request(http::Method::GET, "/held"), true),
            Err(e) => break Some(e),
        };
        match sent {
            Ok((_, mut stream)) => {
                // A few milliseconds apart: each reset lands on a stream hyper has accepted.
                tokio::time::sleep(Duration::from_millis(1)).await;
                stream.send_reset(h2::Reason::CANCEL);
                reset += 1;
            }
            Err(e) => break Some(e),
        }
    };

    let refused = refused.unwrap_or_else(|| panic!("{reset} pending streams reset and no GOAWAY"));
    assert!(refused.is_go_away(), "{refused}");
    assert!(reset <= 2 * shortener::net::MAX_ABANDONED, "GOAWAY only after {reset} reset streams");
    // The stream that was not reset is still answered.
    pause.release();
    let answer = tokio::time::timeout(Duration::from_secs(5), first).await.expect("an answer within 5 s").unwrap();
    assert_eq!(answer.status(), 302);
    assert!(tokio::time::timeout(Duration::from_secs(5), conn).await.is_ok(), "the connection closes after its GOAWAY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_being_served_and_closes_silent_clients_at_once() {
    let (mut app, pause) = app_with_pause(Duration::from_secs(30)).await;
    app.create_code("held2", "https://example.com/held2").await;
    // One HTTP/1 request and one HTTP/2 request, each held in its handler.
    pause.arm();
    let mut h1 = TcpStream::connect(app.addr).await.unwrap();
    h1.write_all(get("/held").as_bytes()).await.unwrap();
    until_reached(&pause).await;
    pause.arm();
    let (h2, conn) = h2_client(app.addr).await;
    let (h2_answer, _) = h2.ready().await.unwrap().send_request(h2_request(http::Method::GET, "/held2"), true).unwrap();
    until_reached(&pause).await;
    let mut silent = Vec::new();
    for state in [Silent::BeforeTheFirstByte, Silent::InAnHttp1Head, Silent::H2AfterAnAnsweredStream] {
        silent.push((state, open_silent(app.addr, &app.key, None, state).await));
    }
    all_accepted(app.addr).await;

    let stopping = tokio::spawn(async move { app.stop().await });
    let mut open = Vec::new();
    for (state, conn) in &mut silent {
        if until_closed(conn, Duration::from_secs(2)).await.is_none() {
            open.push(*state);
        }
    }
    assert!(open.is_empty(), "silent clients kept while requests are held: {open:?}");
    assert!(!stopping.is_finished(), "shutdown did not wait for the held requests");
    pause.release();
    pause.release();

    let r = read_responses(&mut h1, 1).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/held")));
    assert_eq!(r[0].header("connection"), Some("close"));
    let r = tokio::time::timeout(Duration::from_secs(5), h2_answer).await.expect("an answer within 5 s").unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (302, "https://example.com/held2"));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown ends once they are answered")
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(1), conn).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_before_the_server_took_them_end_in_a_goaway() {
    let app = spawn_app(None, |_| {}).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    // A hundred streams opened and reset in one write: all of them reset before hyper took any.
    let mut flood = H2_PREFACE.to_vec();
    for i in 0..100 {
        flood.extend(h2_get(2 * i + 1, "/health"));
        flood.extend(h2_reset(2 * i + 1));
    }
    conn.write_all(&flood).await.unwrap();
    let (goaway, _) = until_goaway(&mut conn, HEADERS).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused_and_a_flood_of_them_ends_in_a_goaway() {
    let (app, pause) = app_with_pause(Duration::from_secs(10)).await;
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(H2_PREFACE).await.unwrap();
    assert_eq!(read_h2_frame(&mut conn).await.0, SETTINGS);
    // The server's limits apply once its SETTINGS are acknowledged.
    conn.write_all(&h2_frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    // 256 streams held in their handler (all wait on one held fill), then 1,200 more.
    pause.arm();
    conn.write_all(&h2_get(1, "/held")).await.unwrap();
    until_reached(&pause).await;
    let more: Vec<u8> = (1..1456).flat_map(|i| h2_get(2 * i + 1, "/held")).collect();
    conn.write_all(&more).await.unwrap();

    let (goaway, refused) = until_goaway(&mut conn, RST_STREAM).await;

    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "after {refused} refused streams");
    // hyper's limit on streams the server resets itself.
    assert_eq!(refused, 1024, "streams refused before the GOAWAY");
    pause.release();
}

/// `n` requests for `/held`, each on a connection of its own, all waiting on one held fill (the
/// pause is armed here), so each holds a turn; returned once every one of them is in flight.
async fn hold_requests(app: &TestApp, pause: &FillPause, n: usize) -> Vec<TcpStream> {
    let misses = || app.state.resolver.stats.misses.get() as usize;
    let before = misses();
    pause.arm();
    let mut held = Vec::new();
    for _ in 0..n {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(get("/held").as_bytes()).await.unwrap();
        held.push(conn);
    }
    // Each counts as a miss as it starts waiting on the fill.
    let all_in_flight = eventually(Duration::from_secs(20), || async { misses() >= before + n }).await;
    assert!(all_in_flight, "{} of {n} requests waiting on the held fill", misses() - before);
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_turns_wait_for_one_and_stalled_heads_hold_none() {
    use std::sync::atomic::Ordering::Relaxed;
    let (app, pause) = app_with_pause(Duration::from_secs(30)).await;
    app.create_code("free", "https://example.com/free").await;
    let waited = || app.state.connections.waited_for_turn.load(Relaxed);
    let turns = shortener::net::TURNS;
    // More stalled heads than there are turns: none of them keeps one.
    let mut stalled = Vec::new();
    for _ in 0..turns + 100 {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(b"GET /free HTTP/1.1\r\nHo").await.unwrap();
        stalled.push(conn);
    }
    let opened = eventually(Duration::from_secs(20), || async {
        app.state.connections.open.load(Relaxed) as usize >= stalled.len()
    })
    .await;
    assert!(opened, "the stalled connections were accepted");
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(get("/free").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
    assert_eq!(waited(), 0, "a request waited for a turn behind stalled heads");

    // Every turn taken by a request being handled.
    let mut held = hold_requests(&app, &pause, turns).await;
    assert_eq!(waited(), 0);
    // One more waits for a turn, and is answered once the others are.
    let mut late = TcpStream::connect(app.addr).await.unwrap();
    late.write_all(get("/free").as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async { waited() == 1 }).await,
        "the request past the turns did not wait"
    );
    pause.release();
    for conn in &mut held {
        assert_eq!(read_responses(conn, 1).await[0].status, 302);
    }
    let r = read_responses(&mut late, 1).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/free")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_a_turn_late_in_a_keep_alive_wait_has_the_head_timeout_from_its_arrival() {
    use std::sync::atomic::Ordering::Relaxed;
    // Heads 3 s, keep-alive 2 s. The connection's timer fires first at the head deadline from
    // its accept (3 s), after its first request (at 2.5 s), and is re-armed for the end of the
    // keep-alive wait (4.5 s). Its next request comes at 3.5 s and waits for a turn until 5.5 s:
    // past the keep-alive's end, within its own head timeout (6.5 s). It must be answered.
    let (head, keep_alive) = (Duration::from_secs(3), Duration::from_secs(2));
    let pause = Arc::new(FillPause::default());
    let app = spawn_app_with(
        None,
        |c| {
            c.http.header_read_timeout = head;
            c.http.keepalive_timeout = keep_alive;
            c.cache.l1_capacity = 0;
        },
        Hooks { fill_pause: Some(pause.clone()), ..Hooks::default() },
    )
    .await;
    app.create_code("held", "https://example.com/held").await;
    app.create_code("free", "https://example.com/free").await;
    let waited = || app.state.connections.waited_for_turn.load(Relaxed);
    let misses = || app.state.resolver.stats.misses.get() as usize;
    let turns = shortener::net::TURNS;

    // All turns but one held by requests being handled.
    let mut held = hold_requests(&app, &pause, turns - 1).await;
    // The connection's first request, late in its head timeout, on the last turn.
    let mut late = TcpStream::connect(app.addr).await.unwrap();
    let accepted = Instant::now();
    tokio::time::sleep_until((accepted + head - Duration::from_millis(500)).into()).await;
    late.write_all(get("/free").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut late, 1).await[0].status, 302);
    let answered = Instant::now();
    assert!(answered < accepted + head, "the first request was answered after the head deadline");
    // The last turn taken too; then, after the timer's first firing, the connection's next
    // request: it waits for a turn.
    let seen = misses();
    let mut last = TcpStream::connect(app.addr).await.unwrap();
    last.write_all(get("/held").as_bytes()).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || async { misses() > seen }).await, "the last turn was not taken");
    held.push(last);
    let waited_before = waited();
    tokio::time::sleep_until((accepted + head + Duration::from_millis(500)).into()).await;
    assert!(answered.elapsed() < keep_alive, "too slow to send the request within the keep-alive wait");
    late.write_all(get("/free").as_bytes()).await.unwrap();
    let sent = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async { waited() == waited_before + 1 }).await,
        "the request did not wait for a turn"
    );
    // A second past the end of the keep-alive wait, before the end of the request's own head
    // timeout.
    tokio::time::sleep_until((answered + keep_alive + Duration::from_secs(1)).into()).await;
    assert!(sent.elapsed() < head, "too slow: the request's own head timeout has passed");
    pause.release();
    for conn in &mut held {
        assert_eq!(read_responses(conn, 1).await[0].status, 302);
    }
    let r = read_responses(&mut late, 1).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/free")));
}

/// Requests the connection layer answered itself, without hyper (`src/net/direct.rs`).
fn direct_answers(app: &TestApp) -> u64 {
    app.state.connections.direct.load(std::sync::atomic::Ordering::Relaxed)
}

/// One request on a connection of its own, and its answer. After a `HEAD`, a `GET /health` on the
/// same connection: its answer must come right after the head, with no body in between.
async fn one_answer(addr: std::net::SocketAddr, req: &str) -> Resp {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    if !req.starts_with("HEAD ") {
        return read_responses(&mut conn, 1).await.pop().unwrap();
    }
    // Then a GET on the same connection: its answer must come next, with nothing in between.
    conn.write_all(get("/health").as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let got =
            tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await.expect("an answer within 10 s");
        let got = got.unwrap();
        assert!(got > 0, "closed before the head of the answer");
        buf.extend_from_slice(&chunk[..got]);
    };
    let (status, headers) = parse_head(&buf[..head_end - 4]);
    let next = &buf[head_end..];
    assert!(
        b"HTTP/1.1 200 ".starts_with(&next[..next.len().min(13)]),
        "after a HEAD's answer: {:?}",
        String::from_utf8_lossy(next)
    );
    Resp { status, headers, body: Vec::new() }
}

/// `resp` with its `date` checked and left out, and its request id left out unless it echoes
/// `sent`.
fn comparable(resp: Resp, sent: Option<&str>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let date = resp.header("date").expect("a date header");
    assert!(std::time::SystemTime::UNIX_EPOCH < httpdate_parse(date), "{date}");
    let headers = resp
        .headers
        .into_iter()
        .filter(|(n, v)| n != "date" && (n != "x-request-id" || Some(v.as_str()) == sent))
        .collect();
    (resp.status, headers, resp.body)
}

/// An IMF-fixdate (`Wed, 02 Dec 2026 10:00:00 GMT`), parsed by hand so that the test does not
/// share the service's formatter.
fn httpdate_parse(s: &str) -> std::time::SystemTime {
    let p: Vec<&str> = s.split([' ', ':']).collect();
    assert_eq!((p.len(), p[7]), (8, "GMT"), "{s}");
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == p[2])
        .unwrap_or_else(|| panic!("{s}")) as u8
        + 1;
    let date = time::Date::from_calendar_date(p[3].parse().unwrap(), month.try_into().unwrap(), p[1].parse().unwrap())
        .unwrap();
    let t = date.with_hms(p[4].parse().unwrap(), p[5].parse().unwrap(), p[6].parse().unwrap()).unwrap();
    assert_eq!(date.weekday().to_string()[..3], *p[0].trim_end_matches(','), "{s}");
    std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(t.assume_utc().unix_timestamp() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redirects_are_answered_directly_with_what_hyper_would_send() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("direct-f", "https://example.com/found").await;
    app.create(serde_json::json!({"code": "direct-p", "url": "https://example.com/perm", "redirect_status": 301}))
        .await;
    let mut direct = 0;
    for (method, path) in [
        ("GET", "/direct-f"),
        ("HEAD", "/direct-f"),
        ("GET", "/direct-p"),
        ("GET", "/no-such-code"),
        ("HEAD", "/no-such-code"),
        ("GET", "/health-x"),
    ] {
        for id in [None, Some("trace-me-1")] {
            let extra = id.map_or(String::new(), |id| format!("X-Request-Id: {id}\r\n"));
            let before = direct_answers(&app);
            // Plain: answered directly. With a query: by hyper, whose redirect ignores it.
            let mine = one_answer(app.addr, &format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")).await;
            assert_eq!(direct_answers(&app), before + 1, "{method} {path}: answered directly");
            let hypers =
                one_answer(app.addr, &format!("{method} {path}?via=hyper HTTP/1.1\r\nHost: t\r\n{extra}\r\n")).await;
            assert_eq!(direct_answers(&app), before + 1, "{method} {path}?via=hyper: through hyper");
            direct += 1;
            let (mine, hypers) = (comparable(mine, id), comparable(hypers, id));
            assert_eq!(mine, hypers, "{method} {path} {id:?}");
            if let Some(id) = id {
                assert!(mine.1.contains(&("x-request-id".into(), id.into())), "{mine:?}");
            }
        }
    }
    let found = one_answer(app.addr, &get("/direct-f")).await;
    assert_eq!((found.status, found.header("location")), (302, Some("https://example.com/found")));
    let perm = one_answer(app.addr, &get("/direct-p")).await;
    assert_eq!(perm.status, 301);
    assert!(perm.header("cache-control").is_some_and(|v| v.starts_with("private, max-age=")), "{perm:?}");
    let head = one_answer(app.addr, "HEAD /no-such-code HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(head.status, 404);
    assert!(head.body.is_empty() && head.header("content-length").is_some_and(|l| l != "0"), "{head:?}");
    assert_eq!(direct_answers(&app), direct + 3);
    // Keep-alive holds across direct answers, and the client's ordinary requests are direct too.
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    for _ in 0..3 {
        conn.write_all(get("/direct-f").as_bytes()).await.unwrap();
        assert_eq!(read_responses(&mut conn, 1).await[0].status, 302);
    }
    // A client library's GET is a plain head (on a connection of its own: one that carried a
    // request with a body stays with hyper until its next request).
    let before = direct_answers(&app);
    let r = client().get(app.url("/direct-f")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "https://example.com/found");
    assert_eq!(direct_answers(&app), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_are_not_plain_are_answered_by_hyper_as_before() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("via-hyper", "https://example.com/vh").await;
    let many: String = (0..40).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
    let cases = [
        "GET /via-hyper HTTP/1.0\r\n\r\n".to_string(),
        "GET /via-hyper HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into(),
        "GET /via-hyper HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".into(),
        "GET /via-hyper HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n".into(),
        "GET http://t/via-hyper HTTP/1.1\r\nHost: t\r\n\r\n".into(),
        format!("GET /via-hyper HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
    ];
    for req in &cases {
        let before = direct_answers(&app);
        let r = one_answer(app.addr, req).await;
        assert_eq!((r.status, r.header("location")), (302, Some("https://example.com/vh")), "{req:?}");
        assert_eq!(direct_answers(&app), before, "{req:?}: not a plain head, yet answered directly");
    }
    // (A head in two packets goes to hyper too: `heads_split_across_packets_…` above.)
    let before = direct_answers(&app);
    // A plain head with `Connection: keep-alive` is plain.
    let r = one_answer(app.addr, "GET /via-hyper HTTP/1.1\r\nHost: t\r\nConnection: keep-alive\r\n\r\n").await;
    assert_eq!(r.status, 302);
    assert_eq!(direct_answers(&app), before + 1);
}
