//! The HTTP/1.1 fast path on the caller's side: requests without a body,
//! read, answered and written by the connection's own task (see
//! [`crate::wire`] for why).
//!
//! Each connection starts here. A request this path does not take (one
//! with a body or `Expect`, `CONNECT`, an HTTP/2 preface, anything that
//! does not parse) hands the whole connection to hyper, the bytes already
//! read replayed first ([`Rewind`]); hyper then serves it to its end,
//! answering malformed input the way it always has.
//!
//! The connection rules are the ones hyper's side keeps (`connection.rs`,
//! `activity.rs`): the first head must be complete within
//! `timeouts.header_read` of accept, a later one within that of its first
//! byte; a connection idle for `timeouts.idle` is closed; shutdown closes
//! idle connections and lets a request in flight finish, with
//! `connection: close`. A caller that hangs up mid-request cancels it, as
//! with hyper: its quota slot and in-flight count are given back.

use super::connection::{Settings, head_size};
use crate::body::{Body, Inbound};
use crate::error::ProxyError;
use crate::proxy::{ConnInfo, Proxy};
use crate::wire::head::{self, Delimit};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// The environment variable that turns the fast path off (`off` or `0`):
/// every connection then goes to hyper from its first byte.
pub const LANE_ENV: &str = "ATOMGIT_PROXY_HTTP1_LANE";

/// Whether connections start on the fast path (read once when a server
/// starts): on unless `ATOMGIT_PROXY_HTTP1_LANE` is `off`, `0` or `false`.
pub fn enabled() -> bool {
    std::env::var(LANE_ENV).map_or(true, |v| !matches!(v.trim(), "off" | "0" | "false"))
}

/// The read buffer's growth step.
const READ_STEP: usize = 8 * 1024;
/// A data frame at least this large is written from where it is, not
/// copied behind the head.
const COPY_LIMIT: usize = 8 * 1024;

/// How the fast path left a connection.
pub(super) enum Outcome {
    /// Closed (or to be dropped): nothing more to do.
    Closed,
    /// For hyper, with these bytes read but not yet used.
    Handoff(Bytes),
}

/// What the next request head turned out to be.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request and unpacked at once; boxing would allocate per request"
)]
enum Next {
    Request(http::request::Parts, Bytes),
    Handoff,
    Close,
}

/// Serves requests on `io` until it closes or must go to hyper.
pub(super) async fn serve<I>(
    io: &mut I,
    proxy: &Proxy,
    info: &ConnInfo,
    settings: Settings,
    stop: &mut watch::Receiver<bool>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_STEP);
    // The first head is timed from accept; later ones from their first byte.
    let mut idle_until = Instant::now() + settings.timeouts.header_read;
    let mut first = true;
    // One timer and one shutdown watch for the connection's life, not one
    // per request: the timer may fire early and is then moved on (see
    // `next_head`), so a request never touches the timer wheel.
    let timer = tokio::time::sleep_until(idle_until);
    let mut timer = std::pin::pin!(timer);
    let mut stop_watch = stop.clone();
    let stopped = stop_watch.wait_for(|stop| *stop);
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let waits = Waits {
            timer: timer.as_mut(),
            stopped: stopped.as_mut(),
            idle_until,
        };
        let (parts, raw) = match next_head(io, &mut buf, settings, waits, first).await {
            Next::Request(parts, raw) => (parts, raw),
            Next::Handoff => return Outcome::Handoff(buf.freeze()),
            Next::Close => return Outcome::Closed,
        };
        first = false;
        let shape = head::request_shape(parts.version, &parts.headers);
        if !takes(&parts, &shape) {
            return Outcome::Handoff(head::rejoined(&raw, &buf).freeze());
        }
        let keep_alive = shape.is_ok_and(|s| s.keep_alive);
        let (method, version) = (parts.method.clone(), parts.version);
        let req = Request::from_parts(parts, Inbound::Empty);
        let limit = settings.max_header_bytes;
        let resp = if head_size(&req) > limit {
            ProxyError::HeadTooLarge { limit }.into_response(None)
        } else {
            // hyper drops the service's future when the caller goes away;
            // so does this (bytes that arrive meanwhile are kept).
            tokio::select! {
                biased;
                resp = proxy.handle(req, info) => resp,
                () = peer_gone(io, &mut buf, limit) => return Outcome::Closed,
            }
        };
        let close = !keep_alive || *stop.borrow();
        let mut out = spare_out();
        let reuse = write_response(io, &mut out, resp, &method, version, close).await;
        keep_out(out);
        if !reuse {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        idle_until = Instant::now() + settings.timeouts.idle;
    }
}

thread_local! {
    /// Write buffers of this thread's connections that are between answers.
    /// A connection takes one to write an answer and gives it back after:
    /// the one taken is the one given back last, warm in cache, where a
    /// buffer of its own per connection went cold between its answers (and
    /// an idle connection held it).
    static SPARE_OUT: std::cell::RefCell<Vec<BytesMut>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare write buffers kept per thread (more are only needed while that
/// many answers are being written at once), and the largest kept.
const SPARE_OUT_KEPT: usize = 8;
const SPARE_OUT_MAX: usize = 64 * 1024;

fn spare_out() -> BytesMut {
    SPARE_OUT
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_STEP))
}

fn keep_out(mut out: BytesMut) {
    if out.capacity() > SPARE_OUT_MAX {
        return;
    }
    out.clear();
    crate::wire::rewind(&mut out, READ_STEP);
    SPARE_OUT.with_borrow_mut(|spare| {
        if spare.len() < SPARE_OUT_KEPT {
            spare.push(out);
        }
    });
}

/// Whether this path serves the request: no body, nothing hyper treats
/// specially.
fn takes(parts: &http::request::Parts, shape: &Result<head::Shape, head::HeadError>) -> bool {
    parts.method != Method::CONNECT
        && parts.uri.path().starts_with('/')
        && matches!(shape, Ok(s) if !s.expect && s.framing == crate::wire::body::Framing::Empty)
}

/// What waiting for a head can end on besides bytes.
struct Waits<'a, S> {
    /// Set at or before the deadline.
    timer: Pin<&'a mut tokio::time::Sleep>,
    /// Resolves once the server shuts down.
    stopped: Pin<&'a mut S>,
    /// Close when no head has started by then.
    idle_until: Instant,
}

/// Reads until a whole request head is in `buf`.
async fn next_head<I, S>(
    io: &mut I,
    buf: &mut BytesMut,
    settings: Settings,
    mut waits: Waits<'_, S>,
    first: bool,
) -> Next
where
    I: AsyncRead + Unpin,
    S: std::future::Future,
{
    // Past this, hyper gets the bytes and answers 431 itself.
    let max = settings.max_header_bytes.max(8192);
    let mut head_until = None;
    // Between requests nothing else shares the buffer: the next head is read
    // into its front, not past the last one's.
    crate::wire::rewind(buf, READ_STEP);
    loop {
        if !buf.is_empty() {
            match head::take_request(buf) {
                Ok(Some((parts, raw))) => return Next::Request(parts, raw),
                Ok(None) if buf.len() <= max => {}
                Ok(None) | Err(_) => return Next::Handoff,
            }
            if !first && head_until.is_none() {
                head_until = Some(Instant::now() + settings.timeouts.header_read);
            }
        }
        let deadline = head_until.unwrap_or(waits.idle_until);
        // Only ever brought forward here; a timer that fires before the
        // deadline is moved on below.
        if waits.timer.deadline() > deadline {
            waits.timer.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            read = read_more(io, buf, READ_STEP / 2) => {
                match read {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => {}
                }
            }
            () = waits.timer.as_mut() => {
                if Instant::now() < deadline {
                    waits.timer.as_mut().reset(deadline);
                    continue;
                }
                tracing::debug!("idle or header read timeout: closing connection");
                return Next::Close;
            }
            // A dropped sender (the server is gone) counts as shutdown too.
            _ = waits.stopped.as_mut() => return Next::Close,
        }
    }
}

/// Resolves once the caller has closed its end; bytes it sends meanwhile
/// (a pipelined request) are kept in `buf`, up to `limit`.
async fn peer_gone<I>(io: &mut I, buf: &mut BytesMut, limit: usize)
where
    I: AsyncRead + Unpin,
{
    let limit = limit.max(8192);
    loop {
        if buf.len() > limit {
            // Enough read ahead: the rest waits in the socket.
            return std::future::pending().await;
        }
        // Not a new buffer per request: the head just taken still shares
        // this one, so growing it now would allocate.
        if matches!(read_more(io, buf, 1024).await, Ok(0) | Err(_)) {
            return;
        }
    }
}

/// Reads what the caller sent into `buf`, first growing it by a step if
/// less than `min_room` is free; `Ok(0)` at the end of input.
async fn read_more<I>(io: &mut I, buf: &mut BytesMut, min_room: usize) -> io::Result<usize>
where
    I: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < min_room {
        buf.reserve(READ_STEP);
    }
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf)).await
}

/// Writes `resp`; whether the connection can take another request.
async fn write_response<I>(
    io: &mut I,
    out: &mut BytesMut,
    resp: Response<Body>,
    method: &Method,
    version: Version,
    mut close: bool,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    // A `HEAD` answer tells the length a `GET` would get, as hyper's does.
    if method == Method::HEAD
        && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        && let Some(n) = http_body::Body::size_hint(&body).exact()
    {
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
    // The body's own length first: an upstream body's was read from its
    // `Content-Length` already, and the proxy's own bodies know theirs.
    let delimit = if head::bodiless(method, status) {
        Delimit::None
    } else if let Some(n) = http_body::Body::size_hint(&body).exact() {
        Delimit::Length(n)
    } else if let Some(n) = head::declared_length(&parts.headers) {
        Delimit::Length(n)
    } else if version == Version::HTTP_11 {
        Delimit::Chunked
    } else {
        close = true;
        Delimit::Close
    };
    out.clear();
    head::put_response(out, &parts, delimit, version, close, crate::wire::date);
    head::recycle(parts.headers);
    let complete = match delimit {
        Delimit::None => true,
        _ => write_body(io, out, body, delimit).await,
    };
    if !out.is_empty() && io.write_all(out).await.is_err() {
        return false;
    }
    complete && !close
}

/// Streams the body behind the head in `out`; whether it ended as framed.
/// Small frames ride along in `out`; what is there is written whenever the
/// body has nothing ready, so a slow body never holds back what came first.
async fn write_body<I>(io: &mut I, out: &mut BytesMut, body: Body, delimit: Delimit) -> bool
where
    I: AsyncWrite + Unpin,
{
    let mut body = std::pin::pin!(body);
    let mut left = match delimit {
        Delimit::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        let frame = match body.as_mut().frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if io.write_all(out).await.is_err() {
                    return false;
                }
                out.clear();
                body.as_mut().frame().await
            }
        };
        let mut data = match frame {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed mid-stream; closing the connection");
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                // Trailers and empty frames: nothing to write.
                _ => continue,
            },
        };
        if delimit == Delimit::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        } else if (data.len() as u64) > left {
            // More than the head announced: the rest cannot be sent.
            data.truncate(left as usize);
        }
        left -= (data.len() as u64).min(left);
        if data.len() < COPY_LIMIT {
            out.extend_from_slice(&data);
        } else if write_both(io, out, &data).await.is_err() {
            return false;
        }
        if delimit == Delimit::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        // Said to be over: no poll to hear it again (an API answer is
        // usually one frame).
        if http_body::Body::is_end_stream(&*body) {
            break;
        }
    }
    match delimit {
        Delimit::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Delimit::Length(_) => left == 0,
        _ => true,
    }
}

/// `a` then `b` in as few writes as the socket takes; `a` ends empty.
async fn write_both<I>(io: &mut I, a: &mut BytesMut, b: &[u8]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let mut b = b;
    while !a.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n <= a.len() {
            a.advance(n);
        } else {
            b = &b[n - a.len()..];
            a.clear();
        }
    }
    io.write_all(b).await
}

/// A connection with bytes already read put back in front, for hyper.
pub(super) struct Rewind<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub fn new(prefix: Bytes, inner: I) -> Rewind<I> {
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(dst.remaining());
            dst.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, dst)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_buffer_given_back_is_the_next_taken_empty_and_a_large_one_is_dropped() {
        let mut out = spare_out();
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        out.advance(4);
        let at = out.as_ptr() as usize - 4;
        keep_out(out);
        let mut again = spare_out();
        assert!(again.is_empty());
        assert_eq!(
            again.as_ptr() as usize,
            at,
            "the same buffer, from its front"
        );
        again.reserve(SPARE_OUT_MAX + 1);
        keep_out(again);
        let fresh = spare_out();
        assert!(fresh.capacity() <= SPARE_OUT_MAX);
    }
}
