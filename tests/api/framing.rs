//! HTTP/1 framing against raw sockets: a request is never read where there is none (smuggling
//! through `Content-Length` and `Transfer-Encoding`, bodies on a GET), requests split anywhere
//! are read whole, and oversized heads and bodies are refused with a close. These held before the
//! connection layer took hyper apart between requests; they are here so that they keep holding.

use std::time::Duration;

use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{
    connections::{closed_within, get, post_links_head, read_responses, Resp},
    helpers::*,
};

/// Sends `bytes` on a fresh connection and reads `n` responses.
async fn exchange(app: &TestApp, bytes: &[u8], n: usize) -> (TcpStream, Vec<Resp>) {
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let responses = read_responses(&mut conn, n).await;
    (conn, responses)
}

/// `bytes` get exactly one response, `status` with `Connection: close`, and then the connection
/// is closed with nothing more on it.
async fn refused_with_a_close(app: &TestApp, bytes: &[u8], status: u16, case: &str) {
    let (mut conn, r) = exchange(app, bytes, 1).await;
    assert_eq!((r[0].status, r[0].header("connection")), (status, Some("close")), "{case}");
    assert!(closed_within(&mut conn, Duration::from_secs(2)).await.is_some(), "{case}: closed after the answer");
}

/// A `POST /api/v1/links` head with `headers` for its framing.
fn post_with(key: &str, headers: &str) -> String {
    format!(
        "POST /api/v1/links HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{headers}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_beside_transfer_encoding_is_read_chunked_and_what_follows_is_never_served() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("smuggled", "https://example.com/smuggled").await;
    // Read by Content-Length the body would be `0\r\n\r`; read chunked it is empty and a request
    // for /smuggled follows it. Either way the connection cannot be trusted after it.
    for framing in
        ["Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"]
    {
        let req = format!("{}0\r\n\r\n{}", post_with(&app.key, framing), get("/smuggled"));
        let (mut conn, r) = exchange(&app, req.as_bytes(), 1).await;
        assert_eq!((r[0].status, r[0].header("connection")), (400, Some("close")), "{framing:?}");
        assert!(String::from_utf8_lossy(&r[0].body).contains("malformed_json"), "the body was empty: chunked");
        assert!(closed_within(&mut conn, Duration::from_secs(2)).await.is_some(), "{framing:?}: /smuggled unanswered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_or_malformed_content_lengths_are_refused_with_400_and_a_close() {
    let app = spawn_app(None, |_| {}).await;
    for framing in [
        "Content-Length: 3\r\nContent-Length: 4\r\n",
        "Content-Length: 4, 4\r\n",
        "Content-Length: +4\r\n",
        "Content-Length: -4\r\n",
        "Content-Length: 4 4\r\n",
    ] {
        let req = format!("{}abcd", post_with(&app.key, framing));
        refused_with_a_close(&app, req.as_bytes(), 400, framing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_identical_content_length_frames_one_body_and_the_connection_stays_in_step() {
    let app = spawn_app(None, |_| {}).await;
    let body = r#"{"url":"https://example.com/twice","code":"twice"}"#;
    let framing = format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", body.len());
    let req = format!("{}{body}{}", post_with(&app.key, &framing), get("/twice"));
    let (_, r) = exchange(&app, req.as_bytes(), 2).await;
    assert_eq!(r[0].status, 201, "{}", String::from_utf8_lossy(&r[0].body));
    assert_eq!((r[1].status, r[1].header("location")), (302, Some("https://example.com/twice")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encodings_that_do_not_end_in_chunked_are_refused_with_400_and_a_close() {
    let app = spawn_app(None, |_| {}).await;
    for framing in [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, identity\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding : chunked\r\n",
    ] {
        let req = format!("{}0\r\n\r\n", post_with(&app.key, framing));
        refused_with_a_close(&app, req.as_bytes(), 400, framing).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_on_a_get_is_read_as_a_body_and_never_as_a_request() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("getbody", "https://example.com/getbody").await;
    app.create_code("smuggled", "https://example.com/smuggled").await;
    let inner = get("/smuggled");

    // With a length: skipped, and the request after it is answered.
    let req =
        format!("GET /getbody HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{inner}{}", inner.len(), get("/health"));
    let (mut conn, r) = exchange(&app, req.as_bytes(), 2).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/getbody")));
    assert_eq!(r[1].status, 200);
    conn.write_all(get("/health").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 200, "still in step");

    // Chunked: the same.
    let req = format!(
        "GET /getbody HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n{}",
        inner.len(),
        get("/health")
    );
    let (mut conn, r) = exchange(&app, req.as_bytes(), 2).await;
    assert_eq!((r[0].status, r[0].header("location")), (302, Some("https://example.com/getbody")));
    assert_eq!(r[1].status, 200);
    conn.write_all(get("/health").as_bytes()).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await[0].status, 200, "still in step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pipelined_behind_a_body_is_answered_after_it() {
    let app = spawn_app(None, |_| {}).await;
    let body = r#"{"url":"https://example.com/behind","code":"behind"}"#;
    let req = format!("{}{body}{}{}", post_links_head(&app.key, body.len()), get("/behind"), get("/health"));
    let (_, r) = exchange(&app, req.as_bytes(), 3).await;
    assert_eq!(r[0].status, 201);
    assert_eq!((r[1].status, r[1].header("location")), (302, Some("https://example.com/behind")));
    assert_eq!(r[2].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_split_at_any_byte_is_read_whole_on_a_connection_that_parks_between_requests() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("split-any", "https://example.com/split-any").await;
    let body = r#"{"url":"https://example.com/created-split"}"#;
    let post = format!("{}{body}", post_links_head(&app.key, body.len()));
    for (req, status) in [(get("/split-any"), 302), (post, 201)] {
        let mut conn = TcpStream::connect(app.addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        for at in 1..req.len() {
            let (start, rest) = req.as_bytes().split_at(at);
            conn.write_all(start).await.unwrap();
            // Two packets, the server reading the first alone (and parking with it).
            tokio::time::sleep(Duration::from_millis(2)).await;
            conn.write_all(rest).await.unwrap();
            let r = read_responses(&mut conn, 1).await;
            assert_eq!(r[0].status, status, "split at {at}: {}", String::from_utf8_lossy(&r[0].body));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_uris_and_bodies_are_refused_with_4xx_and_a_close() {
    let app = spawn_app(None, |c| c.http.max_body_bytes = 16 * 1024).await;
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        ("more headers than hyper takes", format!("GET /health HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n"), 431),
        // hyper checks its 400 KiB buffer between reads, so a head a little past it can pass.
        (
            "a head well past hyper's buffer",
            format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(1_000_000)),
            431,
        ),
        ("a long URI", format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100_000)), 414),
        ("a body past MAX_BODY_BYTES", format!("{}{}", post_links_head(&app.key, 20_000), "x".repeat(20_000)), 413),
        (
            "a chunked body past MAX_BODY_BYTES",
            format!(
                "{}4e20\r\n{}\r\n0\r\n\r\n",
                post_with(&app.key, "Transfer-Encoding: chunked\r\n"),
                "x".repeat(20_000)
            ),
            413,
        ),
    ];
    for (case, req, status) in cases {
        refused_with_a_close(&app, req.as_bytes(), status, case).await;
    }
}
