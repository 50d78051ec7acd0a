//! The load-test baseline: a bare axum server that answers `GET /{code}` with `302` and a
//! `Location` from an in-memory `HashMap`, and `404` for everything else. Nothing more — no
//! middleware, no logging on the request path, no cache tiers, no click counting.
//!
//! `loadtest/run.sh` runs it beside the real service in the same invocation so every figure can
//! be given as a ratio to "a HashMap lookup plus a response", which is what the hot path of the
//! service should cost (the machine is shared and noisy, so absolute numbers mean little).
//!
//! Usage: `static_redirect [CSV] [ADDR] [BACKLOG]`, or the environment: `BASELINE_CSV` (a
//! `code,url` file, the same one `shortener links import` reads; a `code,url` header line is
//! skipped), `BASELINE_ADDR` (default `127.0.0.1:0`) and `BASELINE_BACKLOG`. The bound address is
//! the only line printed on stdout; everything else goes to stderr.
//!
//! What it shares with the service, so the comparison measures the application and not the
//! plumbing: axum 0.8 on hyper (HTTP/1 and HTTP/2 via `axum::serve`), tokio's multi-threaded
//! runtime with its default worker count, `TCP_NODELAY` on accepted sockets, and the listen
//! backlog. Without `BASELINE_BACKLOG` the listener is a plain `tokio::net::TcpListener::bind`
//! as in axum's examples, whose backlog is only 128 (mio's, copied from std); `run.sh` passes the
//! service's `LISTEN_BACKLOG` (4096) instead, because with 128 the baseline drops SYNs when
//! thousands of connections open at once and its latency tail would flatter the service.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    sync::Arc,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    response::Response,
    routing::get,
    serve::ListenerExt,
    Router,
};
use tokio::net::{TcpListener, TcpSocket};

type Links = Arc<HashMap<Box<str>, HeaderValue>>;

/// `GET /{code}`: one map lookup, one response.
async fn redirect(State(links): State<Links>, req: Request) -> Response {
    let code = &req.uri().path()[1..];
    let mut resp = Response::new(Body::empty());
    match links.get(code) {
        Some(location) => {
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(header::LOCATION, location.clone());
        }
        None => *resp.status_mut() = StatusCode::NOT_FOUND,
    }
    resp
}

fn load(path: &str) -> Result<HashMap<Box<str>, HeaderValue>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut links = HashMap::new();
    for (n, line) in BufReader::with_capacity(1 << 20, file).lines().enumerate() {
        let line = line.map_err(|e| format!("{path}: {e}"))?;
        let line = line.trim_end_matches('\r');
        let Some((code, url)) = line.split_once(',') else {
            continue;
        };
        let (code, url) = (code.trim().trim_matches('"'), url.trim().trim_matches('"'));
        if code.is_empty() || code.eq_ignore_ascii_case("code") {
            continue;
        }
        let location = HeaderValue::from_str(url).map_err(|e| format!("{path}:{}: {e}", n + 1))?;
        links.insert(code.into(), location);
    }
    Ok(links)
}

async fn bind(addr: &str, backlog: Option<u32>) -> std::io::Result<TcpListener> {
    let Some(backlog) = backlog else {
        return TcpListener::bind(addr).await;
    };
    let addr: SocketAddr = addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

fn arg_or_env(index: usize, var: &str) -> Option<String> {
    std::env::args().nth(index).or_else(|| std::env::var(var).ok()).filter(|v| !v.is_empty())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let csv =
        arg_or_env(1, "BASELINE_CSV").ok_or("usage: static_redirect CSV [ADDR] (or BASELINE_CSV, BASELINE_ADDR)")?;
    let addr = arg_or_env(2, "BASELINE_ADDR").unwrap_or_else(|| "127.0.0.1:0".to_string());
    let links = load(&csv)?;
    eprintln!("static_redirect: {} links loaded from {csv}", links.len());

    let app = Router::new().route("/{code}", get(redirect)).with_state(Arc::new(links));
    let backlog = arg_or_env(3, "BASELINE_BACKLOG").map(|b| b.parse::<u32>()).transpose()?;
    let listener = bind(&addr, backlog).await.map_err(|e| format!("binding {addr}: {e}"))?;
    println!("{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
