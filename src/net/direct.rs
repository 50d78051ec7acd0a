//! Direct answers: plain HTTP/1.1 requests answered without building a hyper connection.
//!
//! A parked connection that wakes up builds a hyper connection for its request and takes it apart
//! again afterwards (the module's "Why not `serve_connection` for the connection's whole life").
//! For the one request that is most of the traffic — `GET`/`HEAD /{code}` — that construction is
//! most of the user-space work: at 50,000 connections hyper's per-request buffers, dispatcher and
//! request/response plumbing cost more than the redirect itself (`loadtest/c50k.sh`, profile).
//! So when a woken connection's bytes are **one whole head** of the plainest kind, the connection
//! task parses it itself, with httparse (the parser hyper uses), and asks a [`Direct`] for the
//! answer. Anything else goes to hyper exactly as before, with the bytes read so far replayed
//! to it: this path never answers a request hyper would answer differently, it only answers
//! the plain ones cheaper.
//!
//! A head is plain (`plain`) when it is whole in the first read, `HTTP/1.1`, and carries
//! none of what needs hyper's rules: no `Content-Length` or `Transfer-Encoding` (no body),
//! no `Expect`, no `Upgrade`, and no `Connection` header other than `keep-alive`. Its target is
//! an origin-form path without a query. Bytes after the head (a pipelined request) are left for
//! hyper. A head that fails to parse, is too large for the first read, or has more than
//! [`MAX_HEADERS`] headers goes to hyper too, which answers it as it always did (400, 431…).
//!
//! The answer is written the way hyper writes it: the status line with its canonical reason, the
//! response's headers (lower-case names), `content-length` (for a `HEAD`, the length of the body
//! not sent), `connection: close` when the connection is closing, and hyper's `date`.

use std::{
    cell::RefCell,
    future::{poll_fn, Future},
    io::{self, Read as _},
    net::SocketAddr,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use hyper::{
    body::{Body as HttpBody, Bytes},
    header::{self, HeaderName},
    Method, Response, StatusCode,
};
use tokio::{
    io::{AsyncWriteExt, Interest},
    net::TcpStream,
};

use super::BoxError;

/// Headers a direct head may have; a head with more goes to hyper (which allows 100).
pub const MAX_HEADERS: usize = 32;

/// The first read of a woken connection: a plain head must come whole within it.
const READ_SIZE: usize = 4096;

/// A plain request head (see the module's doc), borrowed from the bytes read.
pub struct Head<'a> {
    /// `GET` or `HEAD`.
    pub method: Method,
    /// The request target: an origin-form path, no query.
    pub path: &'a str,
    headers: &'a [httparse::Header<'a>],
}

impl Head<'_> {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name.as_str())).map(|h| h.value)
    }
}

/// Answers some plain requests without hyper.
pub trait Direct: Send + Sync + 'static {
    /// The response body: buffered whole before the answer is written.
    type Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;

    /// The answer to the request `head` from `peer`, or `None` to serve it through hyper.
    fn answer(
        &self,
        peer: SocketAddr,
        head: &Head<'_>,
    ) -> Option<impl Future<Output = Response<Self::Body>> + Send + 'static + use<Self>>;
}

/// Answers nothing directly: every request goes through hyper.
pub struct NoDirect;

impl Direct for NoDirect {
    type Body = String;

    fn answer(
        &self,
        _: SocketAddr,
        _: &Head<'_>,
    ) -> Option<impl Future<Output = Response<String>> + Send + 'static + use<>> {
        None::<std::future::Ready<Response<String>>>
    }
}

/// What a woken connection's first read led to.
pub enum Read<F> {
    /// Nothing there after all (a spurious wake-up).
    Nothing,
    /// The client closed its side, or the socket failed.
    Gone,
    /// For hyper: these bytes, to be replayed to it.
    Hyper(Bytes),
    /// A plain head, answered by `F`; `rest` are the bytes after it, and `head` says whether the
    /// body must be left out.
    Direct { answer: F, rest: Bytes, head: bool },
}

/// Reads what a woken connection has, and decides: a plain head that `direct` answers, or bytes
/// for hyper. Reads once, into a buffer on the stack (nothing is kept across an await).
pub fn read<D: Direct>(
    stream: &TcpStream,
    peer: SocketAddr,
    direct: &D,
) -> Read<impl Future<Output = Response<D::Body>> + Send + 'static + use<D>> {
    let mut buf = [0u8; READ_SIZE];
    let mut n = 0;
    // A read that did not fill the buffer emptied the socket: it tells tokio so, as a read that
    // would block does, and the connection's next wait is not woken at once for an empty read.
    // (Bytes that arrive meanwhile are a new edge, which tokio does not clear.)
    let read = stream.try_io(Interest::READABLE, || {
        n = (&*socket2::SockRef::from(stream)).read(&mut buf)?;
        if n > 0 && n < READ_SIZE {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match read {
        _ if n > 0 => {}
        Ok(()) => return Read::Gone,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => return Read::Nothing,
        Err(_) => return Read::Gone,
    }
    let bytes = &buf[..n];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(len)) = req.parse(bytes) {
        if let Some(head) = plain(&req) {
            if let Some(answer) = direct.answer(peer, &head) {
                let head = head.method == Method::HEAD;
                return Read::Direct { answer, rest: Bytes::copy_from_slice(&bytes[len..]), head };
            }
        }
    }
    Read::Hyper(Bytes::copy_from_slice(bytes))
}

/// The head, if it is plain (see the module's doc).
fn plain<'a>(req: &'a httparse::Request<'_, '_>) -> Option<Head<'a>> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let path = req.path.filter(|p| p.starts_with('/') && !p.contains('?'))?;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection")
                && !h.value.split(|b| *b == b',').all(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive")))
        {
            return None;
        }
    }
    Some(Head { method, path, headers: req.headers })
}

/// Waits for `answer` and writes it (see [`write`]); shutdown that has begun by then
/// (`stopping`) makes it a closing answer too. `turn` is let go as soon as the answer is made:
/// a client that is slow to read it holds none.
pub async fn answer_and_write<B: HttpBody<Data = Bytes> + Unpin, T>(
    stream: &mut TcpStream,
    answer: impl Future<Output = Response<B>>,
    head: bool,
    closing: bool,
    stopping: &AtomicBool,
    patience: Duration,
    turn: T,
) -> Written {
    let resp = answer.await;
    let closing = closing || stopping.load(Ordering::Acquire);
    write(stream, resp, head, closing, patience, turn).await
}

/// How a direct answer ended.
pub enum Written {
    /// Written whole; the connection may serve its next request.
    KeepAlive,
    /// Written with `connection: close` (or the client stopped reading, or the body failed):
    /// close the connection.
    Close,
}

/// Writes `resp` (to a `HEAD` without its body), the way hyper would; with `closing`, with
/// `connection: close`. `turn` is dropped once the answer is encoded. A client that does not take
/// the answer within `patience` is given up on.
async fn write<B, T>(
    stream: &mut TcpStream,
    resp: Response<B>,
    head: bool,
    closing: bool,
    patience: Duration,
    turn: T,
) -> Written
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let mut data: Vec<u8> = Vec::new();
    loop {
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                }
            }
            Some(Err(_)) => return Written::Close,
        }
    }
    let mut out = Vec::with_capacity(256 + if head { 0 } else { data.len() });
    encode(&mut out, parts.status, &parts.headers, data.len(), head, closing);
    if !head {
        out.extend_from_slice(&data);
    }
    drop(turn);
    let sent = match stream.try_write(&out) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Written::Close,
    };
    if sent < out.len() && !matches!(tokio::time::timeout(patience, stream.write_all(&out[sent..])).await, Ok(Ok(()))) {
        return Written::Close;
    }
    if closing {
        Written::Close
    } else {
        Written::KeepAlive
    }
}

/// The status line and headers of an answer with a body of `len` bytes (to a `HEAD` with `head`).
fn encode(out: &mut Vec<u8>, status: StatusCode, headers: &hyper::HeaderMap, len: usize, head: bool, closing: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // As hyper: no implicit `content-length: 0` for a `HEAD`.
    let implicit_zero = head && len == 0;
    if !(bodiless || implicit_zero || headers.contains_key(header::CONTENT_LENGTH)) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(len.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` header of this second (`Tue, 01 Dec 2026 10:00:00 GMT`), as hyper caches it.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

fn date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Option<(String, String)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete(), "{raw:?}");
        plain(&req).map(|h| (h.method.to_string(), h.path.to_string()))
    }

    #[test]
    fn only_plain_heads_are_plain() {
        let ok = |m: &str, p: &str| Some((m.to_string(), p.to_string()));
        assert_eq!(parsed("GET /abc HTTP/1.1\r\nHost: x\r\n\r\n"), ok("GET", "/abc"));
        assert_eq!(parsed("HEAD /abc HTTP/1.1\r\n\r\n"), ok("HEAD", "/abc"));
        assert_eq!(parsed("GET /abc HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n"), ok("GET", "/abc"));
        for raw in [
            "GET /abc HTTP/1.0\r\n\r\n",
            "POST /abc HTTP/1.1\r\n\r\n",
            "get /abc HTTP/1.1\r\n\r\n",
            "GET /abc?x=1 HTTP/1.1\r\n\r\n",
            "GET http://x/abc HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET /abc HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /abc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /abc HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /abc HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /abc HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /abc HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n",
        ] {
            assert_eq!(parsed(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn answers_are_encoded_as_hyper_encodes_them() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(header::LOCATION, "https://example.com/".parse().unwrap());
        let mut out = Vec::new();
        encode(&mut out, StatusCode::FOUND, &headers, 0, false, false);
        let text = String::from_utf8(out).unwrap();
        let date = text.split("date: ").nth(1).unwrap().split("\r\n").next().unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 302 Found\r\nlocation: https://example.com/\r\ncontent-length: 0\r\ndate: {date}\r\n\r\n"
            )
        );
        let mut out = Vec::new();
        encode(&mut out, StatusCode::NOT_FOUND, &hyper::HeaderMap::new(), 12, true, true);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\nconnection: close\r\ndate: "),
            "{text}"
        );
        let mut out = Vec::new();
        encode(&mut out, StatusCode::FOUND, &headers, 0, true, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 302 Found\r\nlocation: https://example.com/\r\ndate: "), "{text}");
    }
}
